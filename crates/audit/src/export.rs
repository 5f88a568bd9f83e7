//! The export format: JSON lines, one record or checkpoint per line, hashes and signatures
//! in hex. Round-trips exactly, so an export can be verified offline with [`crate::verify`].

use sentia_proto::audit::v1::export_item::Item;
use sentia_proto::audit::v1::{AuditEvent, AuditRecord, Checkpoint, ExportEnd, ExportItem};
use serde_json::{Value, json};

fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => json!({"seconds": t.seconds, "nanos": t.nanos}),
        None => Value::Null,
    }
}

fn event_json(e: &AuditEvent) -> Value {
    json!({
        "time": ts(&e.time), "event_type": e.event_type, "principal": e.principal,
        "secret_name": e.secret_name, "operation": e.operation, "source_ip": e.source_ip,
        "user_agent": e.user_agent, "success": e.success,
        "encryption_key_version": e.encryption_key_version, "correlation_id": e.correlation_id,
        "service": e.service, "status_code": e.status_code, "request_id": e.request_id,
        "emitter_id": e.emitter_id, "emitter_sequence": e.emitter_sequence, "tier": e.tier,
    })
}

/// One export line.
pub fn to_line(item: &ExportItem) -> String {
    match &item.item {
        Some(Item::Record(r)) => json!({
            "type": "record", "sequence": r.sequence,
            "prev_hash": hex::encode(&r.prev_hash), "hash": hex::encode(&r.hash),
            "receive_time": ts(&r.receive_time), "appender": r.appender,
            "event": r.event.as_ref().map_or(Value::Null, event_json),
        }),
        Some(Item::End(e)) => json!({
            "type": "end", "from_sequence": e.from_sequence, "to_sequence": e.to_sequence,
            "head_hash": hex::encode(&e.head_hash), "signature": hex::encode(&e.signature),
            "kid": e.kid,
        }),
        Some(Item::Checkpoint(c)) => json!({
            "type": "checkpoint", "sequence": c.sequence,
            "head_hash": hex::encode(&c.head_hash), "signature": hex::encode(&c.signature),
            "kid": c.kid, "time": ts(&c.time),
        }),
        None => json!({"type": "empty"}),
    }
    .to_string()
}

fn field<'a>(v: &'a Value, k: &str) -> Result<&'a Value, String> {
    v.get(k).ok_or_else(|| format!("missing field {k:?}"))
}

fn string(v: &Value, k: &str) -> Result<String, String> {
    field(v, k)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("field {k:?} is not a string"))
}

fn number(v: &Value, k: &str) -> Result<u64, String> {
    field(v, k)?
        .as_u64()
        .ok_or_else(|| format!("field {k:?} is not a non-negative integer"))
}

fn bytes(v: &Value, k: &str) -> Result<Vec<u8>, String> {
    hex::decode(string(v, k)?).map_err(|_| format!("field {k:?} is not hex"))
}

fn timestamp(v: &Value, k: &str) -> Result<Option<prost_types::Timestamp>, String> {
    match field(v, k)? {
        Value::Null => Ok(None),
        t => Ok(Some(prost_types::Timestamp {
            seconds: t
                .get("seconds")
                .and_then(Value::as_i64)
                .ok_or_else(|| format!("{k}.seconds is not an integer"))?,
            nanos: t
                .get("nanos")
                .and_then(Value::as_i64)
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| format!("{k}.nanos is not an integer"))?,
        })),
    }
}

fn event_from(e: &Value) -> Result<AuditEvent, String> {
    Ok(AuditEvent {
        time: timestamp(e, "time")?,
        event_type: string(e, "event_type")?,
        principal: string(e, "principal")?,
        secret_name: string(e, "secret_name")?,
        operation: string(e, "operation")?,
        source_ip: string(e, "source_ip")?,
        user_agent: string(e, "user_agent")?,
        success: field(e, "success")?
            .as_bool()
            .ok_or("field \"success\" is not a boolean")?,
        encryption_key_version: string(e, "encryption_key_version")?,
        correlation_id: string(e, "correlation_id")?,
        service: string(e, "service")?,
        status_code: string(e, "status_code")?,
        request_id: string(e, "request_id")?,
        emitter_id: string(e, "emitter_id")?,
        emitter_sequence: number(e, "emitter_sequence")?,
        tier: u32::try_from(number(e, "tier")?).map_err(|_| "tier out of range")?,
    })
}

/// Parses one export line.
pub fn from_line(line: &str) -> Result<ExportItem, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let item = match string(&v, "type")?.as_str() {
        "record" => Item::Record(AuditRecord {
            sequence: number(&v, "sequence")?,
            event: match field(&v, "event")? {
                Value::Null => None,
                e => Some(event_from(e)?),
            },
            prev_hash: bytes(&v, "prev_hash")?,
            hash: bytes(&v, "hash")?,
            receive_time: timestamp(&v, "receive_time")?,
            // Exports written before appenders were recorded have none.
            appender: match v.get("appender") {
                None => String::new(),
                Some(_) => string(&v, "appender")?,
            },
        }),
        "end" => Item::End(ExportEnd {
            from_sequence: number(&v, "from_sequence")?,
            to_sequence: number(&v, "to_sequence")?,
            head_hash: bytes(&v, "head_hash")?,
            signature: bytes(&v, "signature")?,
            kid: string(&v, "kid")?,
        }),
        "checkpoint" => Item::Checkpoint(Checkpoint {
            sequence: number(&v, "sequence")?,
            head_hash: bytes(&v, "head_hash")?,
            signature: bytes(&v, "signature")?,
            kid: string(&v, "kid")?,
            time: timestamp(&v, "time")?,
        }),
        other => return Err(format!("unknown line type {other:?}")),
    };
    Ok(ExportItem { item: Some(item) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lines_round_trip_exactly() {
        let event = AuditEvent {
            time: Some(prost_types::Timestamp {
                seconds: 7,
                nanos: 9,
            }),
            event_type: "secret_access".into(),
            principal: "app:x \"quoted\"".into(),
            success: true,
            emitter_sequence: 3,
            tier: 1,
            ..Default::default()
        };
        let items = [
            ExportItem {
                item: Some(Item::Record(AuditRecord {
                    sequence: 1,
                    event: Some(event),
                    prev_hash: vec![0; 32],
                    hash: vec![7; 32],
                    receive_time: None,
                    appender: "vault-service".into(),
                })),
            },
            ExportItem {
                item: Some(Item::Checkpoint(Checkpoint {
                    sequence: 1,
                    head_hash: vec![7; 32],
                    signature: vec![1, 2, 3],
                    kid: "audit-checkpoint-v1".into(),
                    time: Some(prost_types::Timestamp {
                        seconds: 1,
                        nanos: 0,
                    }),
                })),
            },
            ExportItem {
                item: Some(Item::End(ExportEnd {
                    from_sequence: 1,
                    to_sequence: 1,
                    head_hash: vec![7; 32],
                    signature: vec![4, 5],
                    kid: "audit-checkpoint-v1".into(),
                })),
            },
        ];
        for item in items {
            assert_eq!(from_line(&to_line(&item)).unwrap(), item);
        }
        assert!(
            from_line("{\"type\":\"record\"}")
                .unwrap_err()
                .contains("sequence")
        );
        assert!(from_line("nope").is_err());
    }
}
