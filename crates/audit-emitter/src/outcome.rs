//! Recording a call's outcome: who made it ([`CallInfo`]), the event each handler records
//! ([`audited`], or a [`Gate`] for changes recorded inside their transaction), and the typed
//! failure marks ([`FailureKind`]) that decide an event's type without reading messages.

use std::sync::atomic::Ordering;

use sentia_proto::audit::v1::AuditEvent;

use crate::{AuditUnavailable, Emitter};

/// Who made a call, from where, in which trace: the parts of an audit event every RPC
/// shares, taken from the request before the handler consumes it.
#[derive(Debug, Clone, Default)]
pub struct CallInfo {
    /// Authenticated principal id ("" before authentication).
    pub principal: String,
    /// Caller address.
    pub source_ip: String,
    /// Caller's user agent.
    pub user_agent: String,
    /// W3C trace id of the request.
    pub correlation_id: String,
    /// x-request-id.
    pub request_id: String,
}

impl CallInfo {
    /// Reads the request's principal, peer address, user agent, request id and trace id.
    pub fn of<T>(req: &tonic::Request<T>) -> Self {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let trace = tracing::Span::current().context();
        let span = trace.span();
        let sc = span.span_context();
        Self {
            principal: req
                .extensions()
                .get::<sentia_identity::Principal>()
                .map(|p| p.id.clone())
                .unwrap_or_default(),
            source_ip: req
                .remote_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
            user_agent: req
                .metadata()
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect())
                .unwrap_or_default(),
            correlation_id: if sc.is_valid() {
                sc.trace_id().to_string()
            } else {
                String::new()
            },
            request_id: sentia_identity::RequestId::of(req),
        }
    }

    /// An event for this call's outcome (`status` = None for OK).
    pub fn event(
        &self,
        event_type: &str,
        operation: &str,
        secret_name: &str,
        status: Option<tonic::Code>,
    ) -> AuditEvent {
        AuditEvent {
            event_type: event_type.into(),
            principal: self.principal.clone(),
            secret_name: secret_name.chars().take(512).collect(),
            operation: operation.into(),
            source_ip: self.source_ip.clone(),
            user_agent: self.user_agent.clone(),
            success: status.is_none(),
            correlation_id: self.correlation_id.clone(),
            status_code: code_name(status.unwrap_or(tonic::Code::Ok)).into(),
            request_id: self.request_id.clone(),
            ..Default::default()
        }
    }
}

/// Records the outcome of `operation` on `name` before the caller sees it, and passes the
/// result on. If the event can be neither sent nor spooled the caller gets UNAVAILABLE
/// instead: a read returns nothing; a change that already happened is reported as not
/// confirmed (and logged). A stored ciphertext failing authentication (DATA_LOSS), or a
/// caller's ciphertext failing it, is recorded as `failed_decryption`.
pub async fn audited<T, E: Into<tonic::Status>>(
    emitter: &Emitter,
    info: &CallInfo,
    event_type: &str,
    operation: &str,
    name: &str,
    result: Result<T, E>,
) -> Result<T, tonic::Status> {
    audited_detail(
        emitter,
        info,
        event_type,
        operation,
        name,
        result,
        Detail::default(),
    )
    .await
}

/// What a handler knows about the secret or key it touched, for its audit event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detail {
    /// key-service key version that wrapped or encrypted it.
    pub key_version: Option<u32>,
    /// The secret's tier (0 = none).
    pub tier: u32,
}

/// [`audited`] with the key version and tier filled in.
pub async fn audited_detail<T, E: Into<tonic::Status>>(
    emitter: &Emitter,
    info: &CallInfo,
    event_type: &str,
    operation: &str,
    name: &str,
    result: Result<T, E>,
    detail: Detail,
) -> Result<T, tonic::Status> {
    let result = result.map_err(Into::into);
    let event = outcome_event(
        info,
        event_type,
        operation,
        name,
        result.as_ref().err(),
        detail,
    );
    if let Err(e) = emitter.emit(event).await {
        tracing::error!(operation, name, error = %e, "operation not confirmed: its audit event could not be recorded");
        return Err(tonic::Status::unavailable(format!(
            "{e}; the {operation} was not confirmed — retry when the audit log is back"
        )));
    }
    result
}

/// Trailer naming why a call failed, set where a service's typed error becomes a `Status`
/// (its one conversion), so callers and the audit log never have to read message text.
pub const FAILURE_TRAILER: &str = "sentia-failure";

/// Why a call failed, beyond its status code, as [`FAILURE_TRAILER`] carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A caller's ciphertext failed authentication (wrong key or context, or modified).
    FailedDecryption,
}

impl FailureKind {
    fn name(self) -> &'static str {
        match self {
            Self::FailedDecryption => "failed-decryption",
        }
    }

    /// `status` carrying this kind in its trailers.
    pub fn mark(self, mut status: tonic::Status) -> tonic::Status {
        status.metadata_mut().insert(
            FAILURE_TRAILER,
            tonic::metadata::MetadataValue::from_static(self.name()),
        );
        status
    }

    /// The kind `status` carries, if any.
    pub fn of(status: &tonic::Status) -> Option<Self> {
        let v = status.metadata().get(FAILURE_TRAILER)?.to_str().ok()?;
        [Self::FailedDecryption].into_iter().find(|k| k.name() == v)
    }
}

/// The event recording an outcome: a stored ciphertext failing authentication (DATA_LOSS),
/// or a caller's ciphertext failing it ([`FailureKind::FailedDecryption`]), becomes
/// `failed_decryption`.
fn outcome_event(
    info: &CallInfo,
    event_type: &str,
    operation: &str,
    name: &str,
    status: Option<&tonic::Status>,
    detail: Detail,
) -> AuditEvent {
    let failed_decryption = status.is_some_and(|s| {
        s.code() == tonic::Code::DataLoss
            || FailureKind::of(s) == Some(FailureKind::FailedDecryption)
    });
    let event_type = if failed_decryption {
        "failed_decryption"
    } else {
        event_type
    };
    let mut event = info.event(event_type, operation, name, status.map(tonic::Status::code));
    event.encryption_key_version = detail
        .key_version
        .map(|v| format!("v{v}"))
        .unwrap_or_default();
    event.tier = detail.tier;
    event
}

const GATE_OPEN: u8 = 0;
const GATE_RECORDED: u8 = 1;
const GATE_REFUSED: u8 = 2;

/// The audit event of a change, recorded while the change's transaction is still open: the
/// store calls [`Gate::record`] just before it commits, so a change whose event can be
/// neither sent nor spooled is rolled back and never happens (fail closed before the
/// effect), and a change that commits was recorded first. [`Gate::finish`] then answers the
/// caller, recording failures the usual way.
pub struct Gate<'a> {
    emitter: &'a Emitter,
    info: &'a CallInfo,
    event_type: &'static str,
    operation: &'static str,
    name: String,
    detail: std::sync::Mutex<Detail>,
    state: std::sync::atomic::AtomicU8,
}

impl std::fmt::Debug for Gate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("operation", &self.operation)
            .field("name", &self.name)
            .finish()
    }
}

impl<'a> Gate<'a> {
    /// A gate for `operation` on `name` by the caller described by `info`.
    pub fn new(
        emitter: &'a Emitter,
        info: &'a CallInfo,
        event_type: &'static str,
        operation: &'static str,
        name: &str,
    ) -> Self {
        Self {
            emitter,
            info,
            event_type,
            operation,
            name: name.to_string(),
            detail: std::sync::Mutex::new(Detail::default()),
            state: std::sync::atomic::AtomicU8::new(GATE_OPEN),
        }
    }

    /// Key version and tier, once the handler knows them (before the commit).
    pub fn set_detail(&self, detail: Detail) {
        if let Ok(mut d) = self.detail.lock() {
            *d = detail;
        }
    }

    fn detail(&self) -> Detail {
        self.detail.lock().map(|d| *d).unwrap_or_default()
    }

    /// Records the change as done; called inside the transaction, before commit. An error
    /// means the transaction must be rolled back.
    pub async fn record(&self) -> Result<(), AuditUnavailable> {
        let event = outcome_event(
            self.info,
            self.event_type,
            self.operation,
            &self.name,
            None,
            self.detail(),
        );
        let result = self.emitter.emit(event).await;
        let state = if result.is_ok() {
            GATE_RECORDED
        } else {
            GATE_REFUSED
        };
        self.state.store(state, Ordering::SeqCst);
        if let Err(e) = &result {
            tracing::error!(operation = self.operation, name = %self.name, error = %e, "change rolled back: its audit event could not be recorded");
        }
        result
    }

    /// [`Gate::record`] for a change made outside a transaction the gate can join: called
    /// just before the change, so a change whose event cannot be recorded is never made (if
    /// the change then fails, [`Gate::finish`] records the failure after the success).
    pub async fn admit(&self) -> Result<(), tonic::Status> {
        self.record().await.map_err(|e| {
            tonic::Status::unavailable(format!(
                "{e}; the {} was not made — retry when the audit log is back",
                self.operation
            ))
        })
    }

    /// The caller's answer. A success recorded by [`Gate::record`] is passed on; a success
    /// that committed nothing (an idempotent replay) and every failure are recorded now; a
    /// failure that is the gate's own refusal is passed on as it is (nothing changed, and
    /// the audit log is known to be unavailable). A failure after a recorded success (the
    /// commit itself failed) is recorded too, so the log shows the change did not stick.
    pub async fn finish<T, E: Into<tonic::Status>>(
        &self,
        result: Result<T, E>,
    ) -> Result<T, tonic::Status> {
        let result = result.map_err(Into::into);
        match (self.state.load(Ordering::SeqCst), &result) {
            (GATE_RECORDED, Ok(_)) | (GATE_REFUSED, Err(_)) => result,
            _ => {
                audited_detail(
                    self.emitter,
                    self.info,
                    self.event_type,
                    self.operation,
                    &self.name,
                    result,
                    self.detail(),
                )
                .await
            }
        }
    }
}

/// The canonical gRPC name of a code, e.g. `PERMISSION_DENIED`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_decryption_is_known_by_its_mark_not_by_its_message() {
        let info = CallInfo::default();
        let kind = |s: &tonic::Status| {
            outcome_event(
                &info,
                "key_operation",
                "decrypt",
                "",
                Some(s),
                Detail::default(),
            )
            .event_type
        };
        let marked = FailureKind::FailedDecryption.mark(tonic::Status::invalid_argument("no"));
        assert_eq!(
            FailureKind::of(&marked),
            Some(FailureKind::FailedDecryption)
        );
        assert_eq!(kind(&marked), "failed_decryption");
        let worded = tonic::Status::invalid_argument("authentication failed: a caller's words");
        assert_eq!(FailureKind::of(&worded), None);
        assert_eq!(kind(&worded), "key_operation");
        assert_eq!(
            kind(&tonic::Status::data_loss("stored")),
            "failed_decryption"
        );
    }
}
