//! Recording a call's outcome: who made it ([`CallInfo`]), the record every handler answers
//! through ([`Call`]), and the typed failure kinds ([`FailureKind`]) that decide an event's
//! type without reading messages.

use std::sync::atomic::Ordering;

use sentia_proto::audit::v1::AuditEvent;

use crate::{AuditUnavailable, Emitter};

/// Where a [`Call`] records its event: the [`Emitter`] in every service, audit-service's own
/// log for reads of that log.
pub trait Sink: Send + Sync {
    /// Records `event`; an error means it can be neither sent nor kept, and the operation it
    /// describes must not be confirmed.
    fn emit(&self, event: AuditEvent) -> Emitting<'_>;
}

/// What [`Sink::emit`] returns.
pub type Emitting<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(), AuditUnavailable>> + Send + 'a>>;

impl Sink for Emitter {
    fn emit(&self, event: AuditEvent) -> Emitting<'_> {
        Box::pin(Emitter::emit(self, event))
    }
}

impl<T: Sink + ?Sized> Sink for std::sync::Arc<T> {
    fn emit(&self, event: AuditEvent) -> Emitting<'_> {
        (**self).emit(event)
    }
}

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

/// What a handler knows about the secret or key it touched, for its audit event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detail {
    /// key-service key version that wrapped or encrypted it.
    pub key_version: Option<u32>,
    /// The secret's tier (0 = none).
    pub tier: u32,
    /// The operation to record instead of the call's, once the handler knows more (a read
    /// of an expired secret is `read_expired`).
    pub operation: Option<&'static str>,
}

/// Trailer naming why a call failed, set where a service's typed error becomes a `Status`
/// (its one conversion), so callers and the audit log never have to read message text.
pub const FAILURE_TRAILER: &str = "sentia-failure";

/// Why a call failed, beyond its status code: what the audit log records and alert rules
/// count. Read from [`FAILURE_TRAILER`] when a service marked the status, else from its code;
/// never from its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A ciphertext failed authentication: a caller's (wrong key or context, or modified;
    /// marked by key-service) or a stored one (DATA_LOSS).
    FailedDecryption,
    /// The caller is unknown or may not do this (UNAUTHENTICATED, PERMISSION_DENIED).
    Denied,
    /// The request itself is wrong (INVALID_ARGUMENT, OUT_OF_RANGE).
    BadInput,
}

impl FailureKind {
    const ALL: [Self; 3] = [Self::FailedDecryption, Self::Denied, Self::BadInput];

    fn name(self) -> &'static str {
        match self {
            Self::FailedDecryption => "failed-decryption",
            Self::Denied => "denied",
            Self::BadInput => "bad-input",
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

    /// The kind `status` carries: its mark, else what its code says.
    pub fn of(status: &tonic::Status) -> Option<Self> {
        let marked = status
            .metadata()
            .get(FAILURE_TRAILER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Self::ALL.into_iter().find(|k| k.name() == v));
        marked.or_else(|| Self::of_code(status.code()))
    }

    /// The kind a status code alone says (stored events keep only the code).
    pub fn of_code(code: tonic::Code) -> Option<Self> {
        use tonic::Code;
        match code {
            Code::DataLoss => Some(Self::FailedDecryption),
            Code::Unauthenticated | Code::PermissionDenied => Some(Self::Denied),
            Code::InvalidArgument | Code::OutOfRange => Some(Self::BadInput),
            _ => None,
        }
    }
}

/// The event recording an outcome: a failed decryption ([`FailureKind::FailedDecryption`])
/// is recorded as `failed_decryption`, whatever the operation.
fn outcome_event(
    info: &CallInfo,
    event_type: &str,
    operation: &str,
    name: &str,
    status: Option<&tonic::Status>,
    detail: Detail,
) -> AuditEvent {
    let event_type = match status.and_then(FailureKind::of) {
        Some(FailureKind::FailedDecryption) => "failed_decryption",
        _ => event_type,
    };
    let operation = detail.operation.unwrap_or(operation);
    let mut event = info.event(event_type, operation, name, status.map(tonic::Status::code));
    event.encryption_key_version = detail
        .key_version
        .map(|v| format!("v{v}"))
        .unwrap_or_default();
    event.tier = detail.tier;
    event
}

const OPEN: u8 = 0;
const RECORDED: u8 = 1;
const REFUSED: u8 = 2;

/// One RPC's audit record. Every handler of every service makes one from its request before
/// doing anything else and answers through [`Call::finish`], so every outcome is recorded —
/// early refusals (no principal, denied, bad input) as much as successes — before the caller
/// sees it. A change records itself first, inside its transaction ([`Call::record`], called
/// by the store just before commit) or just before it is made ([`Call::admit`]): a change
/// whose event can be neither sent nor spooled never happens (fail closed before the effect).
/// A read whose event cannot be recorded returns nothing.
pub struct Call<'a> {
    emitter: &'a dyn Sink,
    info: CallInfo,
    event_type: &'static str,
    operation: &'static str,
    name: String,
    detail: std::sync::Mutex<Detail>,
    state: std::sync::atomic::AtomicU8,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("operation", &self.operation)
            .field("name", &self.name)
            .finish()
    }
}

impl<'a> Call<'a> {
    /// The record of `operation` on `name` (a secret path, key name or "") by the caller of
    /// `req`, as an event of `event_type`.
    pub fn new<T>(
        emitter: &'a dyn Sink,
        req: &tonic::Request<T>,
        event_type: &'static str,
        operation: &'static str,
        name: &str,
    ) -> Self {
        Self::with_info(emitter, CallInfo::of(req), event_type, operation, name)
    }

    /// [`Call::new`] for a caller described by `info` (a caller not yet authenticated, whose
    /// claimed identity is all there is).
    pub fn with_info(
        emitter: &'a dyn Sink,
        info: CallInfo,
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
            state: std::sync::atomic::AtomicU8::new(OPEN),
        }
    }

    /// The same caller and operation on another name: one item of a batch, recorded on its own.
    pub fn item(&self, name: &str) -> Call<'a> {
        Self::with_info(
            self.emitter,
            self.info.clone(),
            self.event_type,
            self.operation,
            name,
        )
    }

    /// Who made the call.
    pub fn info(&self) -> &CallInfo {
        &self.info
    }

    /// The operation recorded.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The secret or key the call is about ("" when none).
    pub fn name(&self) -> &str {
        &self.name
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

    /// Marks a call whose success is its own record (an append to the audit log itself):
    /// only its failures are recorded.
    pub fn self_recording(&self) {
        self.state.store(RECORDED, Ordering::SeqCst);
    }

    /// Records the change as done; called inside the transaction, before commit. An error
    /// means the transaction must be rolled back.
    pub async fn record(&self) -> Result<(), AuditUnavailable> {
        let event = outcome_event(
            &self.info,
            self.event_type,
            self.operation,
            &self.name,
            None,
            self.detail(),
        );
        let result = self.emitter.emit(event).await;
        let state = if result.is_ok() { RECORDED } else { REFUSED };
        self.state.store(state, Ordering::SeqCst);
        if let Err(e) = &result {
            tracing::error!(operation = self.operation, name = %self.name, error = %e, "change rolled back: its audit event could not be recorded");
        }
        result
    }

    /// [`Call::record`] for a change made outside a transaction the call can join: called
    /// just before the change, so a change whose event cannot be recorded is never made (if
    /// the change then fails, [`Call::finish`] records the failure after the success).
    pub async fn admit(&self) -> Result<(), tonic::Status> {
        self.record().await.map_err(|e| {
            tonic::Status::unavailable(format!(
                "{e}; the {} was not made — retry when the audit log is back",
                self.operation
            ))
        })
    }

    /// The caller's answer, recorded. A success already recorded by [`Call::record`] is
    /// passed on; a failure that is the call's own refusal to record is passed on as it is
    /// (nothing changed, and the audit log is known to be unavailable); anything else is
    /// recorded now — a read, a refusal, a success that committed nothing (an idempotent
    /// replay), a failure after a recorded success (the commit itself failed, so the log
    /// shows the change did not stick). If that event can be neither sent nor spooled the
    /// caller gets UNAVAILABLE instead: a read returns nothing; a change is reported as not
    /// confirmed (and logged).
    pub async fn finish<T, E: Into<tonic::Status>>(
        &self,
        result: Result<T, E>,
    ) -> Result<T, tonic::Status> {
        let result = result.map_err(Into::into);
        if let (RECORDED, Ok(_)) | (REFUSED, Err(_)) = (self.state.load(Ordering::SeqCst), &result)
        {
            return result;
        }
        let event = outcome_event(
            &self.info,
            self.event_type,
            self.operation,
            &self.name,
            result.as_ref().err(),
            self.detail(),
        );
        if let Err(e) = self.emitter.emit(event).await {
            let operation = self.operation;
            tracing::error!(operation, name = %self.name, error = %e, "operation not confirmed: its audit event could not be recorded");
            return Err(tonic::Status::unavailable(format!(
                "{e}; the {operation} was not confirmed — retry when the audit log is back"
            )));
        }
        result
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
        assert_eq!(FailureKind::of(&worded), Some(FailureKind::BadInput));
        assert_eq!(kind(&worded), "key_operation");
        assert_eq!(
            kind(&tonic::Status::data_loss("stored")),
            "failed_decryption"
        );
    }

    #[test]
    fn denied_and_bad_input_are_read_from_the_code_unless_a_mark_says_more() {
        use tonic::Status;
        assert_eq!(
            FailureKind::of(&Status::permission_denied("failed decryption")),
            Some(FailureKind::Denied)
        );
        assert_eq!(
            FailureKind::of(&Status::unauthenticated("")),
            Some(FailureKind::Denied)
        );
        assert_eq!(
            FailureKind::of(&Status::out_of_range("")),
            Some(FailureKind::BadInput)
        );
        assert_eq!(FailureKind::of(&Status::not_found("denied")), None);
        let marked = FailureKind::Denied.mark(Status::failed_precondition("sealed"));
        assert_eq!(FailureKind::of(&marked), Some(FailureKind::Denied));
        let unknown_mark = {
            let mut s = Status::internal("");
            s.metadata_mut().insert(
                FAILURE_TRAILER,
                tonic::metadata::MetadataValue::from_static("made-up"),
            );
            s
        };
        assert_eq!(FailureKind::of(&unknown_mark), None);
    }
}
