//! The AuditService implementation. Appending is for service identities (static service
//! tokens or certificates); reading is for holders of the `audit-read` capability on every
//! path (sentia-policy, the same policy file as vault-service). Every call's outcome is
//! recorded in the log itself through [`Call`], as `audit-service`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sentia_policy::{Capability, Policies};
use sentia_proto::audit::v1 as pb;
use sentia_proto::audit::v1::Checkpoint;
use sentia_proto::audit::v1::audit_service_server::AuditService;
use sentia_runtime::audit::{Call, Emitting, Sink};
use sentia_runtime::jwt::PublicKeySet;
use sentia_runtime::{AuthMethod, Principal, Shutdown};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::AuditError;
use crate::store::{Filter, Store};

/// Most events in one append.
pub const MAX_BATCH: usize = 1000;
/// Records read per query while streaming or verifying.
const BATCH: i64 = 1000;
/// Tailers re-poll this often even without a local append (appends on other replicas).
const TAIL_POLL: Duration = Duration::from_secs(1);

/// The identity audit-service appends its own events (reads of the log) as.
pub const OWN_IDENTITY: &str = "audit-service";

/// What this process has seen of the log, outside the database: the highest checkpoint it
/// signed. A database rewritten to an earlier, self-consistent state (records, head row and
/// checkpoints cut back together) still contradicts it.
#[derive(Debug, Default)]
pub struct Witness {
    checkpoint: std::sync::Mutex<Option<(u64, [u8; 32])>>,
}

impl Witness {
    /// Notes a checkpoint signed at `sequence` over `hash`.
    pub fn checkpoint(&self, sequence: u64, hash: [u8; 32]) {
        if let Ok(mut c) = self.checkpoint.lock()
            && c.is_none_or(|(s, _)| s < sequence)
        {
            *c = Some((sequence, hash));
        }
    }

    fn latest(&self) -> Option<(u64, [u8; 32])> {
        self.checkpoint.lock().ok().and_then(|c| *c)
    }
}

/// Everything the AuditService is built from.
pub struct Parts {
    /// The log.
    pub store: Store,
    /// The highest head this process stored (tailers wait on it).
    pub head: Arc<watch::Sender<u64>>,
    /// Appended records go here for alert evaluation.
    pub alerts: mpsc::Sender<Vec<(u64, pb::AuditEvent)>>,
    /// Public keys of the checkpoint key.
    pub checkpoint_keys: Arc<PublicKeySet>,
    /// Signs export ends.
    pub signer: crate::Signer,
    /// What this process has seen.
    pub witness: Arc<Witness>,
    /// Who holds `audit-read`.
    pub policies: Policies,
    /// Stops tails.
    pub shutdown: Shutdown,
}

/// audit-service's own events (calls to it) go straight into the log it keeps.
impl Sink for AuditApi {
    fn emit(&self, mut event: pb::AuditEvent) -> Emitting<'_> {
        Box::pin(async move {
            event.service = OWN_IDENTITY.into();
            event.emitter_id.clone_from(&self.own_emitter.0);
            event.emitter_sequence = self.own_emitter.1.fetch_add(1, Ordering::SeqCst) + 1;
            event.time = Some(sentia_proto::wkt::timestamp(sentia_proto::wkt::now_ms()));
            let mut r = self
                .store
                .append(vec![event], OWN_IDENTITY)
                .await
                .map_err(|e| sentia_runtime::audit::AuditUnavailable(e.to_string()))?;
            self.appended(&mut r).await;
            Ok(())
        })
    }
}

/// Shared state of the AuditService.
#[derive(Clone)]
pub struct AuditApi {
    store: Store,
    head: Arc<watch::Sender<u64>>,
    alerts: mpsc::Sender<Vec<(u64, pb::AuditEvent)>>,
    checkpoint_keys: Arc<PublicKeySet>,
    signer: crate::Signer,
    witness: Arc<Witness>,
    policies: Policies,
    shutdown: Shutdown,
    own_emitter: Arc<(String, AtomicU64)>,
}

/// What had been seen of the log before a check read its head: records up to these must be
/// there. Taken first, so records appended while the check runs never look like a cut.
#[derive(Clone)]
struct Seen {
    /// The newest checkpoint in the database.
    newest_checkpoint: Option<Checkpoint>,
    /// The highest head this process stored.
    own_head: u64,
    /// The newest checkpoint this process signed.
    own_checkpoint: Option<(u64, [u8; 32])>,
}

/// The result of checking a range: the answer, and the last record found good.
struct Checked {
    response: pb::VerifyChainResponse,
    good: Option<(u64, [u8; 32])>,
}

type Res<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn bounded(i: usize, field: &str, v: &str, min: usize, max: usize) -> Result<(), AuditError> {
    if v.len() < min || v.len() > max {
        return Err(AuditError::Invalid(format!(
            "event {i}: {field} must be {min}-{max} bytes (got {})",
            v.len()
        )));
    }
    Ok(())
}

/// Checks one event of a batch; `i` numbers it in messages.
fn validate(i: usize, e: &pb::AuditEvent) -> Result<(), AuditError> {
    match &e.time {
        Some(t) => {
            sentia_proto::wkt::timestamp_ms("time", t)
                .map_err(|m| AuditError::Invalid(format!("event {i}: {m}")))?;
        }
        None => {
            return Err(AuditError::Invalid(format!("event {i}: time is missing")));
        }
    }
    bounded(i, "event_type", &e.event_type, 1, 64)?;
    if !e
        .event_type
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(AuditError::Invalid(format!(
            "event {i}: event_type may only use a-z 0-9 _"
        )));
    }
    bounded(i, "service", &e.service, 1, 64)?;
    bounded(i, "emitter_id", &e.emitter_id, 1, 64)?;
    bounded(i, "principal", &e.principal, 0, 256)?;
    bounded(i, "secret_name", &e.secret_name, 0, 512)?;
    bounded(i, "operation", &e.operation, 0, 64)?;
    bounded(i, "source_ip", &e.source_ip, 0, 64)?;
    bounded(i, "user_agent", &e.user_agent, 0, 256)?;
    bounded(
        i,
        "encryption_key_version",
        &e.encryption_key_version,
        0,
        64,
    )?;
    bounded(i, "correlation_id", &e.correlation_id, 0, 64)?;
    bounded(i, "status_code", &e.status_code, 0, 32)?;
    bounded(i, "request_id", &e.request_id, 0, 128)?;
    if e.tier > 3 {
        return Err(AuditError::Invalid(format!("event {i}: tier must be 0-3")));
    }
    Ok(())
}

fn ms(field: &str, t: &Option<prost_types::Timestamp>) -> Result<Option<i64>, AuditError> {
    t.as_ref()
        .map(|t| sentia_proto::wkt::timestamp_ms(field, t))
        .transpose()
        .map_err(AuditError::Invalid)
}

fn page_size(n: i32) -> Result<i64, AuditError> {
    sentia_proto::page::size(n)
        .map(|n| n as i64)
        .map_err(AuditError::Invalid)
}

/// The sequence a page token of `listing` (made with filters `scope`) continues from.
fn page_position(token: &str, listing: &str, scope: &str) -> Result<u64, AuditError> {
    let refuse = |m: String| AuditError::Invalid(m);
    match sentia_proto::page::decode(token, listing, scope).map_err(refuse)? {
        None => Ok(0),
        Some(p) => p
            .parse()
            .map_err(|_| refuse("page_token does not hold a sequence number".into())),
    }
}

impl AuditApi {
    /// Wires the service together.
    pub fn new(parts: Parts) -> Self {
        Self {
            store: parts.store,
            head: parts.head,
            alerts: parts.alerts,
            checkpoint_keys: parts.checkpoint_keys,
            signer: parts.signer,
            witness: parts.witness,
            policies: parts.policies,
            shutdown: parts.shutdown,
            own_emitter: Arc::new((uuid::Uuid::new_v4().to_string(), AtomicU64::new(0))),
        }
    }

    /// Hands stored records to the alert evaluator and wakes tailers.
    async fn appended(&self, r: &mut crate::store::Appended) {
        let records = std::mem::take(&mut r.new_records);
        if !records.is_empty() && self.alerts.send(records).await.is_err() {
            tracing::error!(
                "the alert evaluator stopped; new events are not checked against alert rules"
            );
        }
        if r.stored > 0 {
            self.head.send_if_modified(|h| {
                let moved = r.last_sequence > *h;
                *h = (*h).max(r.last_sequence);
                moved
            });
        }
    }

    /// Admits the caller of `req` to read the log: it must hold `audit-read`, and its access
    /// is recorded in the log before anything is read, so the read is in the log it reads
    /// (a read that then fails is recorded again, with its failure).
    async fn reader<T>(&self, req: &Request<T>, call: &Call<'_>) -> Result<Principal, Status> {
        let p = self.may_read(req)?;
        call.admit().await?;
        Ok(p)
    }

    /// The caller of `req`, if it holds `audit-read` on every path.
    fn may_read<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let p = Principal::of(req)?;
        self.policies
            .check_everywhere(&p, Capability::AuditRead, "reading the audit log")?;
        Ok(p)
    }

    /// Range bounds: 0 = oldest retained / head.
    async fn range(&self, from: u64, to: u64) -> Result<(u64, u64), AuditError> {
        let (head, _) = self.store.head().await?;
        let from = if from == 0 {
            self.store.oldest().await?
        } else {
            from
        };
        let to = if to == 0 { head } else { to.min(head) };
        if from > to + 1 {
            return Err(AuditError::Invalid(format!(
                "from_sequence {from} is after to_sequence {to}"
            )));
        }
        Ok((from, to))
    }

    /// What the log is known to hold, before its head is read.
    async fn seen(&self) -> Result<Seen, AuditError> {
        let own_head = *self.head.borrow();
        let own_checkpoint = self.witness.latest();
        let newest_checkpoint = self.store.checkpoints_desc(0, 1).await?.into_iter().next();
        Ok(Seen {
            newest_checkpoint,
            own_head,
            own_checkpoint,
        })
    }

    /// Verifies records `from..=to` batch by batch, with the checkpoints in range.
    async fn verify(&self, from: u64, to: u64) -> Result<pb::VerifyChainResponse, AuditError> {
        let seen = self.seen().await?;
        let (head, _) = self.store.head().await?;
        let to_head = to == 0 || to >= head;
        let (from, to) = self.range(from, to).await?;
        let seen = to_head.then_some(seen);
        Ok(self.check(from, to, seen, None).await?.response)
    }

    /// Checks records `from..=to` and their checkpoints. `trusted`: the hash of record
    /// `from - 1` as verified before (the continuous check's watermark) — compared with what
    /// is stored now, so an edit behind it is named. `seen`: for a range that runs to the
    /// head, what was known before the head was read — records it covers must all be there.
    ///
    /// Retention may purge the start of the range while it is read (it removes records up to
    /// a signed checkpoint, which it keeps to anchor the rest). A check that failed while the
    /// oldest retained record moved past `from` is therefore run again from the new start —
    /// anchored, like any check of a purged log, on that checkpoint — so a purge is never
    /// reported as a missing record; a real gap or edit fails the new run too.
    async fn check(
        &self,
        mut from: u64,
        to: u64,
        seen: Option<Seen>,
        mut trusted: Option<[u8; 32]>,
    ) -> Result<Checked, AuditError> {
        // A purge moves the start at most once per retention check; a few runs suffice.
        for _ in 0..3 {
            let checked = self.check_range(from, to, seen.clone(), trusted).await?;
            if checked.response.valid {
                return Ok(checked);
            }
            let start = self.store.oldest().await?;
            if start <= from {
                return Ok(checked);
            }
            tracing::debug!(
                from,
                start,
                "the log's start moved during a check (retention); checking again"
            );
            from = start;
            trusted = None;
        }
        self.check_range(from, to, seen, trusted).await
    }

    async fn check_range(
        &self,
        from: u64,
        to: u64,
        seen: Option<Seen>,
        trusted: Option<[u8; 32]>,
    ) -> Result<Checked, AuditError> {
        self.checkpoint_keys
            .refresh(true)
            .await
            .map_err(|e| AuditError::KeyService(Status::unavailable(e.to_string())))?;
        let keys = self.checkpoint_keys.snapshot();
        let mut out = Checked {
            response: pb::VerifyChainResponse::default(),
            good: None,
        };
        let bad = |mut out: Checked, seq: u64, why: String| {
            out.response.first_bad_sequence = seq;
            out.response.problem = why;
            Ok(out)
        };
        let stored_anchor = if from <= 1 {
            Some(sentia_audit::GENESIS)
        } else {
            self.store.hash_at(from - 1).await?
        };
        let mut anchor = match (trusted, stored_anchor) {
            (Some(t), Some(s)) if t != s => {
                return bad(
                    out,
                    from - 1,
                    "record's hash changed after it was verified (rewritten)".into(),
                );
            }
            (_, Some(h)) => Some(h),
            (_, None) => {
                // Records before `from` are gone: legitimately only by retention, which always
                // keeps the signed checkpoint of the last purged record to anchor the rest.
                match self.store.checkpoint_at(from - 1).await? {
                    Some(c)
                        if sentia_audit::check_signature(
                            &keys,
                            &c.kid,
                            &sentia_audit::checkpoint_message(c.sequence, &c.head_hash),
                            &c.signature,
                        )
                        .is_ok() =>
                    {
                        out.response.checkpoints_checked += 1;
                        <[u8; 32]>::try_from(c.head_hash.as_slice()).ok()
                    }
                    _ => {
                        return bad(
                            out,
                            from - 1,
                            format!(
                                "records before {from} are missing and no signed checkpoint at {} anchors the rest",
                                from - 1
                            ),
                        );
                    }
                }
            }
        };
        let mut after = from.saturating_sub(1);
        loop {
            let batch = self.store.checked_records(after, to, BATCH).await?;
            let Some(last) = batch.last().map(|(r, _)| r.sequence) else {
                break;
            };
            let first = batch.first().map_or(after + 1, |(r, _)| r.sequence);
            if first != after + 1 {
                return bad(
                    out,
                    after + 1,
                    format!("record missing: sequence {first} follows {after}"),
                );
            }
            // Hashes first (an altered event is named as such), then the indexed columns.
            let mut records = Vec::with_capacity(batch.len());
            let mut edited = None;
            for (r, problem) in batch {
                if let Some(why) = problem
                    && edited.is_none()
                {
                    edited = Some((r.sequence, why));
                }
                records.push(r);
            }
            let cps = self.store.checkpoints(first, last).await?;
            let v = sentia_audit::verify(&records, &cps, &keys, anchor, None);
            out.response.records_checked += v.records_checked;
            out.response.checkpoints_checked += v.checkpoints_checked;
            if let Some((seq, why)) = v.problem {
                return bad(out, seq, why);
            }
            if let Some((seq, why)) = edited {
                return bad(out, seq, why);
            }
            let tail = records.last().and_then(|r| {
                <[u8; 32]>::try_from(r.hash.as_slice())
                    .ok()
                    .map(|h| (r.sequence, h))
            });
            anchor = tail.map(|(_, h)| h);
            if tail.is_some() {
                out.good = tail;
            }
            after = last;
        }
        // Records missing at the end: the head says more exist than remain, or — for a range
        // that runs to the head — a signed checkpoint, or this process, saw more.
        let (head, _) = self.store.head().await?;
        let mut claims = vec![(head.min(to), "the head")];
        if let Some(c) = self.store.checkpoints(after + 1, to).await?.last() {
            claims.push((c.sequence, "a signed checkpoint"));
        }
        if let Some(seen) = seen {
            if let Some(c) = &seen.newest_checkpoint
                && c.sequence > after
            {
                if let Err(why) = sentia_audit::check_signature(
                    &keys,
                    &c.kid,
                    &sentia_audit::checkpoint_message(c.sequence, &c.head_hash),
                    &c.signature,
                ) {
                    return bad(out, c.sequence, format!("checkpoint {why}"));
                }
                claims.push((c.sequence, "the newest signed checkpoint"));
            }
            claims.push((seen.own_head, "this audit-service's own appends"));
            if let Some((seq, hash)) = seen.own_checkpoint {
                if seq >= from && seq <= after && self.store.hash_at(seq).await? != Some(hash) {
                    return bad(
                        out,
                        seq,
                        "record differs from the checkpoint this audit-service signed (rewritten)"
                            .into(),
                    );
                }
                claims.push((seq, "a checkpoint this audit-service signed"));
            }
        }
        if let Some((claimed, by)) = claims.into_iter().max_by_key(|(s, _)| *s)
            && claimed > after
        {
            return bad(
                out,
                after + 1,
                format!("log truncated: {by} covers records up to {claimed}, the last is {after}"),
            );
        }
        out.response.valid = true;
        Ok(out)
    }

    /// Checks the chain every `interval` from the last verified record, and the whole of it
    /// every `full_interval`; a break raises the `AuditChainBroken` alert (once per distinct
    /// problem) through the alert sinks. Runs until shutdown.
    pub async fn watch_chain(
        self,
        interval: Duration,
        full_interval: Duration,
        webhook: Option<crate::webhook::Webhook>,
    ) {
        let mut verified: Option<(u64, [u8; 32])> = None;
        let mut last_full = tokio::time::Instant::now();
        let mut reported: Option<(u64, String)> = None;
        loop {
            tokio::select! {
                _ = self.shutdown.wait() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let full = last_full.elapsed() >= full_interval;
            let result = async {
                let seen = self.seen().await?;
                let (head, _) = self.store.head().await?;
                let (from, trusted) = match verified {
                    Some((seq, hash)) if !full => (seq + 1, Some(hash)),
                    _ => (self.store.oldest().await?, None),
                };
                self.check(from, head, Some(seen), trusted).await
            }
            .await;
            let checked = match result {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "checking the audit chain failed; retrying later");
                    continue;
                }
            };
            if full {
                last_full = tokio::time::Instant::now();
            }
            let r = checked.response;
            if r.valid {
                if checked.good.is_some() {
                    verified = checked.good;
                }
                reported = None;
                tracing::debug!(records = r.records_checked, full, "audit chain verified");
                continue;
            }
            let problem = (r.first_bad_sequence, r.problem.clone());
            if reported.as_ref() == Some(&problem) {
                continue;
            }
            let alert = pb::Alert {
                id: uuid::Uuid::now_v7().to_string(),
                rule: "AuditChainBroken".into(),
                severity: pb::Severity::Critical as i32,
                summary: format!(
                    "the audit log does not verify at sequence {}: {}",
                    r.first_bad_sequence, r.problem
                ),
                time: Some(sentia_proto::wkt::timestamp(sentia_proto::wkt::now_ms())),
                sequences: vec![r.first_bad_sequence],
                ..Default::default()
            };
            crate::alerts::raise(&self.store, webhook.as_ref(), alert).await;
            reported = Some(problem);
            // Start over from the beginning next time, so a repair is seen as one.
            verified = None;
        }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn append_events(
        &self,
        req: Request<pb::AppendEventsRequest>,
    ) -> Res<pb::AppendEventsResponse> {
        let call = Call::new(self, &req, "audit_write", "append", "");
        // A stored batch is its own record; refusals and failures are recorded here.
        call.self_recording();
        let result: Res<pb::AppendEventsResponse> = async {
            let p = Principal::of(&req)?;
            if p.method == AuthMethod::Jwt || p.method == AuthMethod::Root {
                return Err(Status::permission_denied(
                    "only service identities (service tokens or certificates) may append audit events",
                ));
            }
            let events = req.into_inner().events;
            if events.is_empty() || events.len() > MAX_BATCH {
                return Err(Status::invalid_argument(format!(
                    "a batch holds 1-{MAX_BATCH} events (got {})",
                    events.len()
                )));
            }
            for (i, e) in events.iter().enumerate() {
                validate(i, e)?;
            }
            // Stored under the caller's own identity: its emitter ids are its alone.
            let mut r = self.store.append(events, &p.id).await?;
            // Alert rules that act on one service's own reports (rotation outcomes, backups,
            // drills) see who appended the event, not who it claims to come from: another
            // service identity cannot raise (or imitate) them.
            for (_, e) in &mut r.new_records {
                e.service.clone_from(&p.id);
            }
            self.appended(&mut r).await;
            Ok(Response::new(pb::AppendEventsResponse {
                last_sequence: r.last_sequence,
                duplicates: r.duplicates,
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn query_events(
        &self,
        req: Request<pb::QueryEventsRequest>,
    ) -> Res<pb::QueryEventsResponse> {
        let filter_name = if req.get_ref().secret_name.is_empty() {
            req.get_ref().principal.clone()
        } else {
            req.get_ref().secret_name.clone()
        };
        let call = Call::new(self, &req, "audit_read", "query", &filter_name);
        let result: Res<pb::QueryEventsResponse> = async {
            self.reader(&req, &call).await?;
            let r = req.into_inner();
            let limit = page_size(r.page_size)?;
            let nonempty = |s: String| (!s.is_empty()).then_some(s);
            let filter = Filter {
                start_ms: ms("start_time", &r.start_time)?,
                end_ms: ms("end_time", &r.end_time)?,
                principal: nonempty(r.principal),
                secret_name: nonempty(r.secret_name),
                event_type: nonempty(r.event_type),
                success: r.success,
            };
            let scope = format!("{filter:?}");
            let after = page_position(&r.page_token, "audit.QueryEvents", &scope)?;
            let mut records = self.store.query(&filter, after, limit + 1).await?;
            let next_page_token = if records.len() as i64 > limit {
                records.truncate(limit as usize);
                records.last().map_or(String::new(), |r| {
                    sentia_proto::page::encode("audit.QueryEvents", &scope, &r.sequence.to_string())
                })
            } else {
                String::new()
            };
            Ok(Response::new(pb::QueryEventsResponse {
                records,
                next_page_token,
            }))
        }
        .await;
        call.finish(result).await
    }

    type TailEventsStream = BoxStream<pb::AuditRecord>;

    async fn tail_events(
        &self,
        req: Request<pb::TailEventsRequest>,
    ) -> Res<Self::TailEventsStream> {
        let call = Call::new(self, &req, "audit_read", "tail", "");
        let result: Res<Self::TailEventsStream> = async {
            self.reader(&req, &call).await?;
            let after = req.into_inner().after_sequence;
            let (head, _) = self.store.head().await?;
            let mut last = if after == 0 { head } else { after };
            let (tx, rx) = mpsc::channel(256);
            let this = self.clone();
            let mut moved = self.head.subscribe();
            tokio::spawn(async move {
                loop {
                    let batch = match this.store.records(last, u64::MAX >> 1, BATCH).await {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    let full = batch.len() as i64 == BATCH;
                    for r in batch {
                        last = r.sequence;
                        if tx.send(Ok(r)).await.is_err() {
                            return;
                        }
                    }
                    if full {
                        continue;
                    }
                    tokio::select! {
                        _ = moved.changed() => {}
                        _ = tokio::time::sleep(TAIL_POLL) => {}
                        _ = tx.closed() => return,
                        _ = this.shutdown.wait() => return,
                    }
                }
            });
            Ok(Response::new(
                Box::pin(ReceiverStream::new(rx)) as Self::TailEventsStream
            ))
        }
        .await;
        call.finish(result).await
    }

    type ExportEventsStream = BoxStream<pb::ExportItem>;

    async fn export_events(
        &self,
        req: Request<pb::ExportEventsRequest>,
    ) -> Res<Self::ExportEventsStream> {
        let call = Call::new(self, &req, "audit_read", "export", "");
        let result: Res<Self::ExportEventsStream> = async {
        self.reader(&req, &call).await?;
        let r = req.into_inner();
        let (from, to) = self.range(r.from_sequence, r.to_sequence).await?;
        // Purged records cannot be exported: start at the oldest retained one.
        let from = from.max(self.store.oldest().await?.min(to + 1));
        let (head, head_hash) = self.store.head().await?;
        let end_hash = match self.store.hash_at(to).await? {
            Some(h) => h,
            None if to == head => head_hash,
            None if to == 0 => sentia_audit::GENESIS,
            None => {
                return Err(AuditError::Invalid(format!(
                    "record {to} is not retained (purged, or missing: run VerifyChain); export a later range"
                ))
                .into());
            }
        };
        // Signed before anything is sent: an export that cannot be ended is not started.
        let (signature, kid) = self
            .signer
            .sign(sentia_audit::export_end_message(from, to, &end_hash))
            .await?;
        let end = pb::ExportEnd {
            from_sequence: from,
            to_sequence: to,
            head_hash: end_hash.to_vec(),
            signature,
            kid,
        };
        let (tx, rx) = mpsc::channel(256);
        let store = self.store.clone();
        tokio::spawn(async move {
            use pb::export_item::Item;
            let send = |item: Item| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(pb::ExportItem { item: Some(item) }))
                        .await
                        .is_ok()
                }
            };
            // Each checkpoint follows the record it covers; the one just before the range
            // anchors its first record; the signed end comes last.
            let result = async {
                let mut cps = store
                    .checkpoints(from.saturating_sub(1), to)
                    .await?
                    .into_iter()
                    .peekable();
                let mut after = from.saturating_sub(1);
                while let Some(c) = cps.next_if(|c| c.sequence <= after) {
                    if !send(Item::Checkpoint(c)).await {
                        return Ok(());
                    }
                }
                loop {
                    let records = store.records(after, to, BATCH).await?;
                    let Some(last) = records.last().map(|r| r.sequence) else {
                        break;
                    };
                    for r in records {
                        let seq = r.sequence;
                        if !send(Item::Record(r)).await {
                            return Ok(());
                        }
                        while let Some(c) = cps.next_if(|c| c.sequence <= seq) {
                            if !send(Item::Checkpoint(c)).await {
                                return Ok(());
                            }
                        }
                    }
                    after = last;
                }
                send(Item::End(end)).await;
                Ok::<(), AuditError>(())
            };
            if let Err(e) = result.await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Self::ExportEventsStream))
        }
        .await;
        call.finish(result).await
    }

    async fn verify_chain(
        &self,
        req: Request<pb::VerifyChainRequest>,
    ) -> Res<pb::VerifyChainResponse> {
        let call = Call::new(self, &req, "audit_read", "verify", "");
        let result: Res<pb::VerifyChainResponse> = async {
            self.reader(&req, &call).await?;
            let r = req.into_inner();
            Ok(Response::new(
                self.verify(r.from_sequence, r.to_sequence).await?,
            ))
        }
        .await;
        call.finish(result).await
    }

    async fn list_checkpoints(
        &self,
        req: Request<pb::ListCheckpointsRequest>,
    ) -> Res<pb::ListCheckpointsResponse> {
        let call = Call::new(self, &req, "audit_read", "list_checkpoints", "");
        let result: Res<pb::ListCheckpointsResponse> = async {
            self.reader(&req, &call).await?;
            let r = req.into_inner();
            let limit = page_size(r.page_size)?;
            let before = page_position(&r.page_token, "audit.ListCheckpoints", "")?;
            let mut checkpoints = self.store.checkpoints_desc(before, limit + 1).await?;
            let next_page_token = if checkpoints.len() as i64 > limit {
                checkpoints.truncate(limit as usize);
                checkpoints.last().map_or(String::new(), |c| {
                    sentia_proto::page::encode("audit.ListCheckpoints", "", &c.sequence.to_string())
                })
            } else {
                String::new()
            };
            Ok(Response::new(pb::ListCheckpointsResponse {
                checkpoints,
                next_page_token,
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> Res<pb::ListAlertsResponse> {
        let call = Call::new(self, &req, "audit_read", "list_alerts", "");
        let result: Res<pb::ListAlertsResponse> = async {
            self.reader(&req, &call).await?;
            let r = req.into_inner();
            let limit = page_size(r.page_size)?;
            let scope = format!("include_acknowledged={}", r.include_acknowledged);
            let before = sentia_proto::page::decode(&r.page_token, "audit.ListAlerts", &scope)
                .map_err(AuditError::Invalid)?
                .unwrap_or_default();
            let mut alerts = self
                .store
                .alerts(r.include_acknowledged, &before, limit + 1)
                .await?;
            let next_page_token = if alerts.len() as i64 > limit {
                alerts.truncate(limit as usize);
                alerts.last().map_or(String::new(), |a| {
                    sentia_proto::page::encode("audit.ListAlerts", &scope, &a.id)
                })
            } else {
                String::new()
            };
            Ok(Response::new(pb::ListAlertsResponse {
                alerts,
                next_page_token,
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn acknowledge_alert(&self, req: Request<pb::AcknowledgeAlertRequest>) -> Res<pb::Alert> {
        let id = req.get_ref().id.clone();
        let call = Call::new(
            self,
            &req,
            "admin",
            "acknowledge_alert",
            sentia_runtime::text::clip(&id, 64).as_ref(),
        );
        let result: Res<pb::Alert> = async {
            let p = self.may_read(&req)?;
            if id.is_empty() || id.len() > 64 {
                return Err(Status::invalid_argument(
                    "id must be an alert id (1-64 characters)",
                ));
            }
            call.admit().await?;
            match self.store.acknowledge(&id, &p.id).await? {
                Some(a) => {
                    tracing::info!(alert = %id, by = %p.id, "alert acknowledged");
                    Ok(Response::new(a))
                }
                None => Err(Status::not_found(format!("no alert {id}"))),
            }
        }
        .await;
        call.finish(result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> pb::AuditEvent {
        pb::AuditEvent {
            time: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            event_type: "secret_access".into(),
            service: "vault-service".into(),
            emitter_id: "e".into(),
            ..Default::default()
        }
    }

    #[test]
    fn events_are_validated_field_by_field() {
        assert!(validate(0, &event()).is_ok());
        let cases: Vec<(pb::AuditEvent, &str)> = vec![
            (
                pb::AuditEvent {
                    time: None,
                    ..event()
                },
                "time",
            ),
            (
                pb::AuditEvent {
                    event_type: "Secret Access".into(),
                    ..event()
                },
                "event_type",
            ),
            (
                pb::AuditEvent {
                    service: String::new(),
                    ..event()
                },
                "service",
            ),
            (
                pb::AuditEvent {
                    emitter_id: String::new(),
                    ..event()
                },
                "emitter_id",
            ),
            (
                pb::AuditEvent {
                    user_agent: "x".repeat(300),
                    ..event()
                },
                "user_agent",
            ),
            (pb::AuditEvent { tier: 4, ..event() }, "tier"),
        ];
        for (e, field) in cases {
            let err = validate(7, &e).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains("event 7"),
                "{field}: {err}"
            );
        }
    }
}
