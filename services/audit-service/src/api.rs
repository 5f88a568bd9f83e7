//! The AuditService implementation. Appending is for service identities (static service
//! tokens or certificates); reading is for admin identities and JWTs carrying one of
//! `SENTIA_AUDIT_READ_POLICIES`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sentia_proto::audit::v1 as pb;
use sentia_proto::audit::v1::audit_service_server::AuditService;
use sentia_runtime::jwt::PublicKeySet;
use sentia_runtime::{AuthMethod, Principal, Role, Shutdown};
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

/// Shared state of the AuditService.
#[derive(Clone)]
pub struct AuditApi {
    store: Store,
    head: Arc<watch::Sender<u64>>,
    alerts: mpsc::Sender<Vec<(u64, pb::AuditEvent)>>,
    checkpoint_keys: Arc<PublicKeySet>,
    read_policies: Arc<Vec<String>>,
    shutdown: Shutdown,
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
        Some(t) if t.seconds >= 0 && (0..1_000_000_000).contains(&t.nanos) => {}
        _ => {
            return Err(AuditError::Invalid(format!(
                "event {i}: time is missing or invalid"
            )));
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

fn ms(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref()
        .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
}

fn page_size(n: i32) -> Result<i64, AuditError> {
    match n {
        0 => Ok(100),
        1..=1000 => Ok(i64::from(n)),
        _ => Err(AuditError::Invalid(format!(
            "page_size {n} must be 1-1000 (0 = 100)"
        ))),
    }
}

fn page_token(t: &str) -> Result<u64, AuditError> {
    if t.is_empty() {
        return Ok(0);
    }
    t.parse()
        .map_err(|_| AuditError::Invalid("page_token is not one this server issued".into()))
}

impl AuditApi {
    /// Wires the service together.
    pub fn new(
        store: Store,
        head: Arc<watch::Sender<u64>>,
        alerts: mpsc::Sender<Vec<(u64, pb::AuditEvent)>>,
        checkpoint_keys: Arc<PublicKeySet>,
        read_policies: Vec<String>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            store,
            head,
            alerts,
            checkpoint_keys,
            read_policies: Arc::new(read_policies),
            shutdown,
        }
    }

    fn may_read<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        let p = Principal::of(req)?;
        let allowed = match p.method {
            AuthMethod::Jwt => p.policies.iter().any(|x| self.read_policies.contains(x)),
            // vault-service's root token (checked there, when SENTIA_VAULT_SERVICE_ADDR is set).
            AuthMethod::Root => true,
            _ => p.role == Role::Admin,
        };
        if allowed {
            Ok(p)
        } else {
            Err(AuditError::Denied(format!(
                "reading the audit log needs the audit-read capability; '{}' does not have it",
                p.id
            ))
            .into())
        }
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

    /// Verifies records `from..=to` batch by batch, with the checkpoints in range.
    async fn verify(&self, from: u64, to: u64) -> Result<pb::VerifyChainResponse, AuditError> {
        let (from, to) = self.range(from, to).await?;
        let (head, _) = self.store.head().await?;
        self.checkpoint_keys
            .refresh(true)
            .await
            .map_err(|e| AuditError::KeyService(Status::unavailable(e.to_string())))?;
        let keys = self.checkpoint_keys.snapshot();
        let mut out = pb::VerifyChainResponse::default();
        let mut anchor = if from <= 1 {
            Some(sentia_audit::GENESIS)
        } else if let Some(h) = self.store.hash_at(from - 1).await? {
            Some(h)
        } else {
            // Records before `from` are gone: legitimately only by retention, which always
            // keeps the signed checkpoint of the last purged record to anchor the rest.
            match self.store.checkpoint_at(from - 1).await? {
                Some(c)
                    if keys.get(&c.kid).is_some_and(|k| {
                        sentia_crypto::verify_ed25519(
                            k,
                            sentia_audit::checkpoint_message(c.sequence, &c.head_hash).as_bytes(),
                            &c.signature,
                        )
                    }) =>
                {
                    out.checkpoints_checked += 1;
                    <[u8; 32]>::try_from(c.head_hash.as_slice()).ok()
                }
                _ => {
                    out.first_bad_sequence = from - 1;
                    out.problem = format!(
                        "records before {from} are missing and no signed checkpoint at {} anchors the rest",
                        from - 1
                    );
                    return Ok(out);
                }
            }
        };
        let mut after = from.saturating_sub(1);
        loop {
            let records = self.store.records(after, to, BATCH).await?;
            let Some(last) = records.last().map(|r| r.sequence) else {
                break;
            };
            let first = records.first().map_or(after + 1, |r| r.sequence);
            if first != after + 1 {
                out.first_bad_sequence = after + 1;
                out.problem = format!("record missing: sequence {first} follows {after}");
                return Ok(out);
            }
            let cps = self.store.checkpoints(first, last).await?;
            let v = sentia_audit::verify(&records, &cps, &keys, anchor, None);
            out.records_checked += v.records_checked;
            out.checkpoints_checked += v.checkpoints_checked;
            if let Some((seq, why)) = v.problem {
                out.first_bad_sequence = seq;
                out.problem = why;
                return Ok(out);
            }
            anchor = records
                .last()
                .and_then(|r| <[u8; 32]>::try_from(r.hash.as_slice()).ok());
            after = last;
        }
        // Records missing at the end: the head (or a checkpoint) says more exist than remain.
        let claimed = head.min(to).max(
            self.store
                .checkpoints(after + 1, to)
                .await?
                .last()
                .map_or(0, |c| c.sequence),
        );
        if claimed > after {
            out.first_bad_sequence = after + 1;
            out.problem =
                format!("log truncated: records up to {claimed} should exist, the last is {after}");
            return Ok(out);
        }
        out.valid = true;
        Ok(out)
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn append_events(
        &self,
        req: Request<pb::AppendEventsRequest>,
    ) -> Res<pb::AppendEventsResponse> {
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
        let r = self.store.append(&events).await?;
        if !r.new_records.is_empty() && self.alerts.send(r.new_records.clone()).await.is_err() {
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
        Ok(Response::new(pb::AppendEventsResponse {
            last_sequence: r.last_sequence,
            duplicates: r.duplicates,
        }))
    }

    async fn query_events(
        &self,
        req: Request<pb::QueryEventsRequest>,
    ) -> Res<pb::QueryEventsResponse> {
        self.may_read(&req)?;
        let r = req.into_inner();
        let limit = page_size(r.page_size)?;
        let after = page_token(&r.page_token)?;
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let filter = Filter {
            start_ms: ms(&r.start_time),
            end_ms: ms(&r.end_time),
            principal: nonempty(r.principal),
            secret_name: nonempty(r.secret_name),
            event_type: nonempty(r.event_type),
            success: r.success,
        };
        let mut records = self.store.query(&filter, after, limit + 1).await?;
        let next_page_token = if records.len() as i64 > limit {
            records.truncate(limit as usize);
            records
                .last()
                .map_or(String::new(), |r| r.sequence.to_string())
        } else {
            String::new()
        };
        Ok(Response::new(pb::QueryEventsResponse {
            records,
            next_page_token,
        }))
    }

    type TailEventsStream = BoxStream<pb::AuditRecord>;

    async fn tail_events(
        &self,
        req: Request<pb::TailEventsRequest>,
    ) -> Res<Self::TailEventsStream> {
        self.may_read(&req)?;
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
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExportEventsStream = BoxStream<pb::ExportItem>;

    async fn export_events(
        &self,
        req: Request<pb::ExportEventsRequest>,
    ) -> Res<Self::ExportEventsStream> {
        self.may_read(&req)?;
        let r = req.into_inner();
        let (from, to) = self.range(r.from_sequence, r.to_sequence).await?;
        let (tx, rx) = mpsc::channel(256);
        let store = self.store.clone();
        tokio::spawn(async move {
            use pb::export_item::Item;
            // The checkpoint just before the range anchors its first record.
            let result = async {
                let cps = store.checkpoints(from.saturating_sub(1), to).await?;
                let mut after = from.saturating_sub(1);
                loop {
                    let records = store.records(after, to, BATCH).await?;
                    let Some(last) = records.last().map(|r| r.sequence) else {
                        break;
                    };
                    for r in records {
                        if tx
                            .send(Ok(pb::ExportItem {
                                item: Some(Item::Record(r)),
                            }))
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    after = last;
                }
                for c in cps {
                    if tx
                        .send(Ok(pb::ExportItem {
                            item: Some(Item::Checkpoint(c)),
                        }))
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Ok::<(), AuditError>(())
            };
            if let Err(e) = result.await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn verify_chain(
        &self,
        req: Request<pb::VerifyChainRequest>,
    ) -> Res<pb::VerifyChainResponse> {
        self.may_read(&req)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.verify(r.from_sequence, r.to_sequence).await?,
        ))
    }

    async fn list_checkpoints(
        &self,
        req: Request<pb::ListCheckpointsRequest>,
    ) -> Res<pb::ListCheckpointsResponse> {
        self.may_read(&req)?;
        let r = req.into_inner();
        let limit = page_size(r.page_size)?;
        let before = page_token(&r.page_token)?;
        let mut checkpoints = self.store.checkpoints_desc(before, limit + 1).await?;
        let next_page_token = if checkpoints.len() as i64 > limit {
            checkpoints.truncate(limit as usize);
            checkpoints
                .last()
                .map_or(String::new(), |c| c.sequence.to_string())
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints,
            next_page_token,
        }))
    }

    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> Res<pb::ListAlertsResponse> {
        self.may_read(&req)?;
        let r = req.into_inner();
        let limit = page_size(r.page_size)?;
        let mut alerts = self
            .store
            .alerts(r.include_acknowledged, &r.page_token, limit + 1)
            .await?;
        let next_page_token = if alerts.len() as i64 > limit {
            alerts.truncate(limit as usize);
            alerts.last().map_or(String::new(), |a| a.id.clone())
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAlertsResponse {
            alerts,
            next_page_token,
        }))
    }

    async fn acknowledge_alert(&self, req: Request<pb::AcknowledgeAlertRequest>) -> Res<pb::Alert> {
        let p = self.may_read(&req)?;
        let id = req.into_inner().id;
        if id.is_empty() || id.len() > 64 {
            return Err(Status::invalid_argument(
                "id must be an alert id (1-64 characters)",
            ));
        }
        match self.store.acknowledge(&id, &p.id).await? {
            Some(a) => {
                tracing::info!(alert = %id, by = %p.id, "alert acknowledged");
                Ok(Response::new(a))
            }
            None => Err(Status::not_found(format!("no alert {id}"))),
        }
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
