//! One audit event per RPC outcome, recorded before the caller sees the result. If the event
//! can be neither sent nor spooled the caller gets UNAVAILABLE instead of the result: a read
//! returns no value; a write that already committed is reported as not confirmed (and logged).

use sentia_runtime::audit::{CallInfo, Emitter};
use tonic::{Code, Status};

/// Records the outcome of `operation` on `name` and passes the result on as a status.
pub async fn audited<T, E: Into<Status>>(
    emitter: &Emitter,
    info: &CallInfo,
    event_type: &str,
    operation: &str,
    name: &str,
    result: Result<T, E>,
) -> Result<T, Status> {
    let result = result.map_err(Into::into);
    let code = result.as_ref().err().map(Status::code);
    // A stored ciphertext that fails authentication is its own event type: alert rules and
    // reports look for it.
    let event_type = if code == Some(Code::DataLoss) {
        "failed_decryption"
    } else {
        event_type
    };
    let event = info.event(event_type, operation, name, code);
    if let Err(e) = emitter.emit(event).await {
        tracing::error!(operation, secret = name, error = %e, "operation not confirmed: its audit event could not be recorded");
        return Err(Status::unavailable(format!(
            "{e}; the {operation} was not confirmed — retry when the audit log is back"
        )));
    }
    result
}
