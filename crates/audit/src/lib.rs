//! The audit chain, shared by audit-service (which builds and checks it) and `sentia audit
//! verify` (which checks an export offline): the canonical encoding of an event, the record
//! hash `SHA-256(prev_hash ‖ canonical(event, sequence))`, the checkpoint message, and a
//! verifier that names the first bad record.
#![forbid(unsafe_code)]

pub mod export;

use std::collections::HashMap;

use sentia_proto::audit::v1::export_item::Item;
use sentia_proto::audit::v1::{AuditEvent, AuditRecord, Checkpoint, ExportItem};

/// `prev_hash` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// Domain tag at the start of every canonical encoding, so the format can evolve.
const CANONICAL_TAG: &[u8] = b"sentia-audit-event-v1";
/// The tag of a record that names its appender: the v1 fields, then the appender.
const CANONICAL_TAG_V2: &[u8] = b"sentia-audit-event-v2";

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The exact bytes hashed for an event at `sequence`: a tag, the sequence, then every field
/// in field-number order, strings length-prefixed, integers big-endian. Independent of
/// protobuf's encoding choices, so any implementation can reproduce it.
pub fn canonical(event: &AuditEvent, sequence: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(CANONICAL_TAG);
    out.extend_from_slice(&sequence.to_be_bytes());
    let (secs, nanos) = event.time.as_ref().map_or((0, 0), |t| (t.seconds, t.nanos));
    out.extend_from_slice(&secs.to_be_bytes());
    out.extend_from_slice(&nanos.to_be_bytes());
    for s in [
        &event.event_type,
        &event.principal,
        &event.secret_name,
        &event.operation,
        &event.source_ip,
        &event.user_agent,
    ] {
        put_str(&mut out, s);
    }
    out.push(u8::from(event.success));
    for s in [
        &event.encryption_key_version,
        &event.correlation_id,
        &event.service,
        &event.status_code,
        &event.request_id,
        &event.emitter_id,
    ] {
        put_str(&mut out, s);
    }
    out.extend_from_slice(&event.emitter_sequence.to_be_bytes());
    out.extend_from_slice(&event.tier.to_be_bytes());
    out
}

/// The bytes hashed for a stored record: [`canonical`] when no appender is recorded (records
/// stored before appenders were), else the v2 tag, the same fields and the appender — so the
/// identity that appended a record is as tamper-evident as the event.
pub fn canonical_record(event: &AuditEvent, sequence: u64, appender: &str) -> Vec<u8> {
    let mut out = canonical(event, sequence);
    if !appender.is_empty() {
        out[..CANONICAL_TAG_V2.len()].copy_from_slice(CANONICAL_TAG_V2);
        put_str(&mut out, appender);
    }
    out
}

/// The hash of the record holding `event` at `sequence`, appended by `appender`, after a
/// record hashed `prev`.
pub fn record_hash(prev: &[u8; 32], event: &AuditEvent, sequence: u64, appender: &str) -> [u8; 32] {
    let mut buf = Vec::with_capacity(32 + 256);
    buf.extend_from_slice(prev);
    buf.extend_from_slice(&canonical_record(event, sequence, appender));
    sentia_crypto::sha256(&buf)
}

/// The message a checkpoint signs.
pub fn checkpoint_message(sequence: u64, head_hash: &[u8]) -> String {
    format!(
        "sentia-audit-checkpoint|{sequence}|{}",
        hex::encode(head_hash)
    )
}

/// The message an export's end signs: the range and the hash of its last record. Its prefix
/// differs from a checkpoint's, so neither signature can stand in for the other.
pub fn export_end_message(from: u64, to: u64, head_hash: &[u8]) -> String {
    format!("sentia-audit-export|{from}|{to}|{}", hex::encode(head_hash))
}

/// Checks `signature` over `message` with the key `kid`; the error says what is wrong.
pub fn check_signature(
    keys: &HashMap<String, Vec<u8>>,
    kid: &str,
    message: &str,
    signature: &[u8],
) -> Result<(), String> {
    let Some(key) = keys.get(kid) else {
        return Err(format!("signed by unknown key {kid:?}"));
    };
    if sentia_crypto::verify_ed25519(key, message.as_bytes(), signature) {
        Ok(())
    } else {
        Err("signature is not valid".into())
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Records checked.
    pub records_checked: u64,
    /// Checkpoints checked.
    pub checkpoints_checked: u64,
    /// The first bad sequence and what is wrong with it.
    pub problem: Option<(u64, String)>,
}

impl Verdict {
    /// True when nothing was wrong.
    pub fn valid(&self) -> bool {
        self.problem.is_none()
    }
}

/// Checks records (in the order given) and checkpoints against public keys (`kid` →
/// Ed25519 key). `anchor`: the hash the first record must follow — [`GENESIS`] for sequence
/// 1, or the head hash of a trusted checkpoint just before the range; `None` accepts the
/// first record's `prev_hash` as given (a range whose start cannot be anchored).
/// `head`: the sequence the log claims to end at, to detect a truncated tail.
pub fn verify(
    records: &[AuditRecord],
    checkpoints: &[Checkpoint],
    keys: &HashMap<String, Vec<u8>>,
    anchor: Option<[u8; 32]>,
    head: Option<u64>,
) -> Verdict {
    let mut v = Verdict::default();
    let mut hashes: HashMap<u64, [u8; 32]> = HashMap::new();
    let mut prev: Option<([u8; 32], u64)> = None;
    for r in records {
        let bad = |what: String| Some((r.sequence, what));
        let Ok(stored_prev) = <[u8; 32]>::try_from(r.prev_hash.as_slice()) else {
            v.problem = bad("prev_hash is not 32 bytes".into());
            return v;
        };
        match prev {
            None => {
                if r.sequence == 1 && stored_prev != GENESIS {
                    v.problem = bad("the first record does not start the chain".into());
                    return v;
                }
                if let Some(a) = anchor
                    && a != stored_prev
                {
                    v.problem = bad("does not follow the anchoring checkpoint's head hash".into());
                    return v;
                }
            }
            Some((h, seq)) => {
                if r.sequence != seq + 1 {
                    let problem = if r.sequence > seq + 1 {
                        (
                            seq + 1,
                            format!("record missing: sequence {} follows {seq}", r.sequence),
                        )
                    } else {
                        (
                            r.sequence,
                            format!("out of order: sequence {} follows {seq}", r.sequence),
                        )
                    };
                    v.problem = Some(problem);
                    return v;
                }
                if stored_prev != h {
                    v.problem = bad("prev_hash does not match the previous record's hash (reordered or replaced)".into());
                    return v;
                }
            }
        }
        let Some(event) = &r.event else {
            v.problem = bad("record has no event".into());
            return v;
        };
        let computed = record_hash(&stored_prev, event, r.sequence, &r.appender);
        if r.hash.as_slice() != computed {
            v.problem = bad("hash does not match the record's contents (altered)".into());
            return v;
        }
        hashes.insert(r.sequence, computed);
        prev = Some((computed, r.sequence));
        v.records_checked += 1;
    }
    let last = prev.map(|(_, s)| s);
    if let (Some(h), Some(l)) = (head, last)
        && h > l
    {
        v.problem = Some((
            l + 1,
            format!("log truncated: head is {h} but the last record is {l}"),
        ));
        return v;
    }
    for c in checkpoints {
        let msg = checkpoint_message(c.sequence, &c.head_hash);
        if let Err(why) = check_signature(keys, &c.kid, &msg, &c.signature) {
            v.problem = Some((c.sequence, format!("checkpoint {why}")));
            return v;
        }
        match hashes.get(&c.sequence) {
            Some(h) if h.as_slice() == c.head_hash.as_slice() => {}
            Some(_) => {
                v.problem = Some((
                    c.sequence,
                    "record differs from what the checkpoint signed".into(),
                ));
                return v;
            }
            None if last.is_some_and(|l| c.sequence > l) => {
                v.problem = Some((
                    last.map_or(1, |l| l + 1),
                    format!(
                        "log truncated: a checkpoint covers sequence {} but the last record is {}",
                        c.sequence,
                        last.unwrap_or(0)
                    ),
                ));
                return v;
            }
            None => continue,
        }
        v.checkpoints_checked += 1;
    }
    v
}

/// Checks an export as `sentia audit export` wrote it: its records and interleaved
/// checkpoints as [`verify`] does (the checkpoint just before the first record anchors it),
/// and that it ends with a valid signed end naming exactly the records present — so an
/// export cut anywhere, or with records dropped at either end, is named.
pub fn verify_export(items: &[ExportItem], keys: &HashMap<String, Vec<u8>>) -> Verdict {
    let mut records = Vec::new();
    let mut checkpoints = Vec::new();
    let mut end = None;
    for (i, item) in items.iter().enumerate() {
        match &item.item {
            Some(Item::Record(r)) => records.push(r.clone()),
            Some(Item::Checkpoint(c)) => checkpoints.push(c.clone()),
            Some(Item::End(e)) => end = Some((i, e.clone())),
            None => {}
        }
    }
    let first = records.first().map_or(1, |r| r.sequence);
    let anchor = if first <= 1 {
        Some(GENESIS)
    } else {
        checkpoints
            .iter()
            .find(|c| c.sequence + 1 == first)
            .and_then(|c| <[u8; 32]>::try_from(c.head_hash.as_slice()).ok())
    };
    let mut v = verify(&records, &checkpoints, keys, anchor, None);
    if !v.valid() {
        return v;
    }
    let last = records.last().map(|r| (r.sequence, r.hash.clone()));
    let after_last = last.as_ref().map_or(first, |(s, _)| s + 1);
    let Some((at, e)) = end else {
        v.problem = Some((
            after_last,
            "export cut short: it has no signed end line, so records after the last one may be missing".into(),
        ));
        return v;
    };
    let problem = if at + 1 != items.len() {
        Some("lines follow the export's signed end".to_string())
    } else if let Err(why) = check_signature(
        keys,
        &e.kid,
        &export_end_message(e.from_sequence, e.to_sequence, &e.head_hash),
        &e.signature,
    ) {
        Some(format!("the export's end is {why}"))
    } else {
        match &last {
            None if e.from_sequence <= e.to_sequence => Some(format!(
                "export cut: its end covers records {}..{} but none are present",
                e.from_sequence, e.to_sequence
            )),
            None => None,
            Some(_) if first != e.from_sequence => Some(format!(
                "export cut: it starts at record {first} but its signed end says {}",
                e.from_sequence
            )),
            Some((seq, _)) if *seq != e.to_sequence => Some(format!(
                "export cut: its last record is {seq} but its signed end says {}",
                e.to_sequence
            )),
            Some((_, hash)) if *hash != e.head_hash => {
                Some("the last record differs from what the export's end signed".to_string())
            }
            Some(_) => None,
        }
    };
    if let Some(why) = problem {
        v.problem = Some((after_last.min(e.to_sequence.saturating_add(1)), why));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i as i64,
                nanos: 5,
            }),
            event_type: "secret_access".into(),
            principal: "app:billing".into(),
            secret_name: "prod/db".into(),
            operation: "read".into(),
            success: true,
            service: "vault-service".into(),
            status_code: "OK".into(),
            emitter_id: "e1".into(),
            emitter_sequence: i,
            ..Default::default()
        }
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|s| {
                let e = event(s);
                let h = record_hash(&prev, &e, s, "");
                let r = AuditRecord {
                    sequence: s,
                    event: Some(e),
                    prev_hash: prev.to_vec(),
                    hash: h.to_vec(),
                    receive_time: None,
                    appender: String::new(),
                };
                prev = h;
                r
            })
            .collect()
    }

    fn signed(records: &[AuditRecord], seq: u64, key: &sentia_crypto::SigningKey) -> Checkpoint {
        let head = records[(seq - 1) as usize].hash.clone();
        Checkpoint {
            sequence: seq,
            signature: key.sign(checkpoint_message(seq, &head).as_bytes()).to_vec(),
            head_hash: head,
            kid: "audit-checkpoint-v1".into(),
            time: None,
        }
    }

    fn setup() -> (Vec<AuditRecord>, Vec<Checkpoint>, HashMap<String, Vec<u8>>) {
        let key =
            sentia_crypto::SigningKey::from_seed(sentia_crypto::SecretKey::generate()).unwrap();
        let records = chain(10);
        let cps = vec![signed(&records, 5, &key), signed(&records, 10, &key)];
        let keys = HashMap::from([("audit-checkpoint-v1".to_string(), key.public_key().to_vec())]);
        (records, cps, keys)
    }

    #[test]
    fn an_intact_chain_with_checkpoints_verifies() {
        let (r, c, k) = setup();
        let v = verify(&r, &c, &k, Some(GENESIS), Some(10));
        assert!(v.valid(), "{v:?}");
        assert_eq!((v.records_checked, v.checkpoints_checked), (10, 2));
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let base = event(1);
        let mut variants = Vec::new();
        let mut e = base.clone();
        e.principal.push('x');
        variants.push(e);
        let mut e = base.clone();
        e.success = false;
        variants.push(e);
        let mut e = base.clone();
        e.tier = 1;
        variants.push(e);
        let mut e = base.clone();
        e.emitter_sequence = 2;
        variants.push(e);
        let mut e = base.clone();
        e.time = Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        });
        variants.push(e);
        // Moving bytes between adjacent fields changes the encoding (length prefixes).
        let mut e = base.clone();
        e.operation = "rea".into();
        e.source_ip = "d".into();
        variants.push(e);
        for v in variants {
            assert_ne!(canonical(&v, 1), canonical(&base, 1), "{v:?}");
        }
        assert_ne!(canonical(&base, 1), canonical(&base, 2));
    }

    #[test]
    fn a_flipped_byte_is_named() {
        let (mut r, c, k) = setup();
        r[3].event.as_mut().unwrap().principal = "app:mallory".into();
        let v = verify(&r, &c, &k, Some(GENESIS), Some(10));
        assert_eq!(v.problem.as_ref().map(|p| p.0), Some(4), "{v:?}");
        assert!(v.problem.unwrap().1.contains("altered"));
    }

    #[test]
    fn a_deleted_row_is_named() {
        let (mut r, c, k) = setup();
        r.remove(6);
        let v = verify(&r, &c, &k, Some(GENESIS), Some(10));
        assert_eq!(v.problem.as_ref().map(|p| p.0), Some(7), "{v:?}");
        assert!(v.problem.unwrap().1.contains("missing"));
    }

    #[test]
    fn reordered_rows_are_named() {
        let (mut r, c, k) = setup();
        // Swap the contents of 4 and 5 but keep the sequence column in order.
        let (a, b) = (r[3].clone(), r[4].clone());
        r[3] = AuditRecord { sequence: 4, ..b };
        r[4] = AuditRecord { sequence: 5, ..a };
        let v = verify(&r, &c, &k, Some(GENESIS), Some(10));
        assert_eq!(v.problem.as_ref().map(|p| p.0), Some(4), "{v:?}");
    }

    #[test]
    fn a_tail_truncated_after_a_checkpoint_is_named() {
        let (mut r, c, k) = setup();
        r.truncate(7);
        let v = verify(&r, &c, &k, Some(GENESIS), None);
        let (seq, why) = v.problem.clone().unwrap();
        assert_eq!(seq, 8, "{v:?}");
        assert!(why.contains("truncated"), "{why}");
        let v = verify(&r, &c[..1], &k, Some(GENESIS), Some(10));
        assert!(v.problem.unwrap().1.contains("head is 10"));
    }

    #[test]
    fn a_rewritten_chain_fails_at_its_checkpoint() {
        // An attacker who rewrites record 3 and re-hashes everything after it keeps the chain
        // consistent, but cannot re-sign the checkpoints.
        let (r, c, k) = setup();
        let mut forged = Vec::new();
        let mut prev = GENESIS;
        for rec in &r {
            let mut e = rec.event.clone().unwrap();
            if rec.sequence == 3 {
                e.success = false;
            }
            let h = record_hash(&prev, &e, rec.sequence, "");
            forged.push(AuditRecord {
                sequence: rec.sequence,
                event: Some(e),
                prev_hash: prev.to_vec(),
                hash: h.to_vec(),
                receive_time: None,
                appender: String::new(),
            });
            prev = h;
        }
        let v = verify(&forged, &c, &k, Some(GENESIS), Some(10));
        assert_eq!(v.problem.as_ref().map(|p| p.0), Some(5), "{v:?}");
        assert!(v.problem.unwrap().1.contains("checkpoint"));
        let mut bad_sig = c.clone();
        bad_sig[0].signature[0] ^= 1;
        assert!(
            verify(&r, &bad_sig, &k, Some(GENESIS), Some(10))
                .problem
                .unwrap()
                .1
                .contains("signature")
        );
    }

    #[test]
    fn the_appender_is_covered_by_the_hash_and_an_empty_one_keeps_the_v1_hash() {
        let e = event(1);
        assert_eq!(canonical_record(&e, 1, ""), canonical(&e, 1));
        let a = record_hash(&GENESIS, &e, 1, "vault-service");
        assert_ne!(a, record_hash(&GENESIS, &e, 1, ""));
        assert_ne!(a, record_hash(&GENESIS, &e, 1, "audit-service"));
        let (mut r, c, k) = setup();
        r[2].appender = "mallory".into();
        let v = verify(&r, &c, &k, Some(GENESIS), Some(10));
        assert_eq!(v.problem.map(|p| p.0), Some(3));
    }

    fn export(key: &sentia_crypto::SigningKey) -> Vec<ExportItem> {
        let records = chain(10);
        let mut items = Vec::new();
        for r in &records {
            items.push(ExportItem {
                item: Some(Item::Record(r.clone())),
            });
            if r.sequence % 5 == 0 {
                items.push(ExportItem {
                    item: Some(Item::Checkpoint(signed(&records, r.sequence, key))),
                });
            }
        }
        let head = records[9].hash.clone();
        items.push(ExportItem {
            item: Some(Item::End(sentia_proto::audit::v1::ExportEnd {
                from_sequence: 1,
                to_sequence: 10,
                signature: key
                    .sign(export_end_message(1, 10, &head).as_bytes())
                    .to_vec(),
                head_hash: head,
                kid: "audit-checkpoint-v1".into(),
            })),
        });
        items
    }

    #[test]
    fn an_export_cut_anywhere_or_trimmed_at_either_end_is_named() {
        let key =
            sentia_crypto::SigningKey::from_seed(sentia_crypto::SecretKey::generate()).unwrap();
        let keys = HashMap::from([("audit-checkpoint-v1".to_string(), key.public_key().to_vec())]);
        let items = export(&key);
        let v = verify_export(&items, &keys);
        assert!(v.valid(), "{v:?}");
        assert_eq!((v.records_checked, v.checkpoints_checked), (10, 2));
        // Cut after every line but the last, including right after a checkpoint.
        for n in 0..items.len() {
            let v = verify_export(&items[..n], &keys);
            assert!(!v.valid(), "cut to {n} lines verified");
        }
        let mut no_first = items.clone();
        no_first.remove(0);
        let v = verify_export(&no_first, &keys);
        assert!(v.problem.unwrap().1.contains("starts at record 2"));
        let mut forged_end = items.clone();
        if let Some(ExportItem {
            item: Some(Item::End(e)),
        }) = forged_end.last_mut()
        {
            e.to_sequence = 7;
        }
        let v = verify_export(&forged_end, &keys);
        assert!(v.problem.unwrap().1.contains("signature"));
    }
}
