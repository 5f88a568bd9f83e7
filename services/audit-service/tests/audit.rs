//! audit-service over gRPC with a real key-service signing its checkpoints, on SQLite and
//! Postgres: append, idempotent replay, query, tail, and verification that names tampering.
#![allow(clippy::unwrap_used)]

use sentia_testkit::keys;

use std::time::Duration;

use sentia_proto::audit::v1 as pb;
use sentia_proto::audit::v1::audit_service_client::AuditServiceClient;
use sentia_runtime::client::{AuthedChannel, CallContext, connect_lazy};
use sentia_runtime::{MapSource, Shutdown};
use tonic::Code;

struct Audit {
    keys: keys::Running,
    addr: String,
    db: String,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<()>,
}

impl Audit {
    async fn start(postgres: bool) -> Option<Self> {
        Self::start_with(postgres, &[]).await
    }

    async fn start_with(postgres: bool, extra: &[(&str, &str)]) -> Option<Self> {
        let (kdb, db) = if postgres {
            (keys::postgres_url().await?, keys::postgres_url().await?)
        } else {
            (keys::sqlite_url(), keys::sqlite_url())
        };
        let keys = keys::Running::start(&kdb, &[]).await;
        let tokens = keys::tokens();
        let mut pairs = vec![
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_DATABASE_URL", db.as_str()),
            ("SENTIA_KEY_SERVICE_ADDR", keys.addr.as_str()),
            ("SENTIA_KEY_SERVICE_TOKEN", keys::AUDIT_TOKEN),
            ("SENTIA_AUTH_TOKENS", tokens.as_str()),
            ("SENTIA_CHECKPOINT_EVERY", "5"),
            ("SENTIA_CHECKPOINT_INTERVAL", "100ms"),
        ];
        pairs.extend_from_slice(extra);
        let config = audit_service::Config::from_source(&MapSource::from_pairs(pairs)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let handle =
            tokio::spawn(async move { audit_service::run(config, listener, stop).await.unwrap() });
        let a = Self {
            keys,
            addr,
            db,
            shutdown,
            handle,
        };
        // Ready when health answers: a read of the log would itself be recorded in it.
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            connect_lazy(&a.addr, None).unwrap(),
        );
        for _ in 0..200 {
            if health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(a)
    }

    fn client(&self, token: &str) -> AuditServiceClient<AuthedChannel> {
        let ch = connect_lazy(&self.addr, None).unwrap();
        AuditServiceClient::new(CallContext::with_token(Some(token)).unwrap().wrap(ch))
    }

    /// As the emitting service.
    fn emitter(&self) -> AuditServiceClient<AuthedChannel> {
        self.client(keys::SERVICE_TOKEN)
    }

    /// As an operator.
    fn reader(&self) -> AuditServiceClient<AuthedChannel> {
        self.client(keys::ADMIN_TOKEN)
    }

    /// A JWT with `policies`, signed by key-service's token key.
    async fn jwt(&self, policies: &[&str]) -> String {
        self.keys
            .sign_token("sentia-jwt-v1", &keys::claims("app:test", 60, policies))
            .await
    }

    async fn append(&self, range: std::ops::RangeInclusive<u64>) -> pb::AppendEventsResponse {
        self.emitter()
            .append_events(pb::AppendEventsRequest {
                events: range.map(event).collect(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Every record, as `who` reads them (the read itself is recorded first).
    async fn all(&self, who: &str) -> Vec<pb::AuditRecord> {
        keys::audit_records(&self.client(who)).await
    }

    async fn verify(&self) -> pb::VerifyChainResponse {
        self.reader()
            .verify_chain(pb::VerifyChainRequest::default())
            .await
            .unwrap()
            .into_inner()
    }

    async fn wait_for_checkpoint(&self, sequence: u64) {
        for _ in 0..200 {
            let cps = self
                .reader()
                .list_checkpoints(pb::ListCheckpointsRequest::default())
                .await
                .unwrap()
                .into_inner();
            if cps
                .checkpoints
                .first()
                .is_some_and(|c| c.sequence >= sequence)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no checkpoint reached {sequence}");
    }

    /// Stored alerts, as an operator lists them (open ones only unless `acknowledged_too`).
    async fn alerts(&self, acknowledged_too: bool) -> Vec<pb::Alert> {
        self.reader()
            .list_alerts(pb::ListAlertsRequest {
                include_acknowledged: acknowledged_too,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .alerts
    }

    /// Open alerts, polled until `done` says they are what the test waits for (or 10 s).
    async fn alerts_until(&self, done: impl Fn(&[pb::Alert]) -> bool) -> Vec<pb::Alert> {
        let mut alerts = Vec::new();
        for _ in 0..200 {
            alerts = self.alerts(false).await;
            if done(&alerts) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        alerts
    }

    async fn sql(&self, statement: &str) {
        let pool = sqlx::AnyPool::connect(&self.db).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&pool)
            .await
            .unwrap();
    }

    async fn stop(self) {
        self.shutdown.trigger();
        self.handle.await.unwrap();
        self.keys.stop().await;
    }
}

/// (sequence, emitter sequence) of the emitting service's records among `records`.
fn emitted(records: &[pb::AuditRecord]) -> Vec<(u64, u64)> {
    records
        .iter()
        .filter_map(|r| {
            let e = r.event.as_ref()?;
            (e.service == "vault-service").then_some((r.sequence, e.emitter_sequence))
        })
        .collect()
}

fn event(i: u64) -> pb::AuditEvent {
    pb::AuditEvent {
        time: Some(prost_types::Timestamp {
            seconds: 1_790_000_000 + i as i64,
            nanos: 0,
        }),
        event_type: if i.is_multiple_of(2) {
            "secret_access".into()
        } else {
            "secret_write".into()
        },
        principal: format!("app:p{}", i % 3),
        secret_name: format!("prod/app/s{}", i % 2),
        operation: "read".into(),
        success: !i.is_multiple_of(4),
        service: "vault-service".into(),
        status_code: "OK".into(),
        emitter_id: "emitter-1".into(),
        emitter_sequence: i,
        ..Default::default()
    }
}

macro_rules! on_both {
    ($($name:ident),*) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { if let Some(a) = super::Audit::start(false).await { super::$name(&a).await; a.stop().await; } })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { if let Some(a) = super::Audit::start(true).await { super::$name(&a).await; a.stop().await; } })* }
    };
}

on_both!(
    appends_chain_and_a_replayed_batch_is_stored_once,
    queries_filter_and_page_oldest_first,
    a_flipped_byte_is_named_by_verify,
    a_deleted_row_is_named_by_verify,
    reordered_rows_are_named_by_verify,
    a_tail_truncated_after_a_checkpoint_is_named_by_verify,
    a_tail_cut_across_a_checkpoint_with_the_head_rewritten_is_named_by_verify,
    a_tail_cut_with_its_checkpoints_and_head_rewritten_is_named_by_verify,
    an_edited_index_column_is_named_by_verify_and_refused_by_queries,
    an_emitter_id_belongs_to_the_identity_that_first_used_it,
    concurrent_appends_committed_together_each_get_their_own_outcome
);

async fn appends_chain_and_a_replayed_batch_is_stored_once(a: &Audit) {
    assert_eq!(a.append(1..=3).await.last_sequence, 3);
    let again = a.append(1..=4).await;
    assert_eq!((again.last_sequence, again.duplicates), (4, 3));
    let records = a.all(keys::ADMIN_TOKEN).await;
    assert_eq!(
        emitted(&records),
        vec![(1, 1), (2, 2), (3, 3), (4, 4)],
        "stored once each, in order"
    );
    assert_eq!(records[0].prev_hash, vec![0u8; 32]);
    for w in records.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    assert!(records[..4].iter().all(|r| r.appender == "vault-service"));
    // The query itself is the record after them: reading the log is recorded in it.
    let read = records[4].event.clone().unwrap();
    assert_eq!(
        (
            records[4].appender.as_str(),
            read.event_type.as_str(),
            read.operation.as_str(),
            read.principal.as_str(),
            read.success
        ),
        ("audit-service", "audit_read", "query", "operator", true)
    );
    a.wait_for_checkpoint(4).await;
    let v = a.verify().await;
    assert!(v.valid, "{v:?}");
    assert!(v.records_checked >= 5, "{v:?}");
    assert!(v.checkpoints_checked >= 1);

    // Bad input and wrong callers.
    let err = a
        .emitter()
        .append_events(pb::AppendEventsRequest { events: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = a
        .emitter()
        .append_events(pb::AppendEventsRequest {
            events: vec![pb::AuditEvent {
                time: None,
                ..event(9)
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("event 0: time"), "{err:?}");
    let app = a.jwt(&["system_admin"]).await;
    let err = a
        .client(&app)
        .append_events(pb::AppendEventsRequest {
            events: vec![event(9)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    a.client(&app)
        .query_events(pb::QueryEventsRequest::default())
        .await
        .unwrap();
    let dev = a.jwt(&["developer"]).await;
    let err = a
        .client(&dev)
        .query_events(pb::QueryEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = a
        .emitter()
        .query_events(pb::QueryEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "a service identity appends, it does not read"
    );
    // Refused reads are recorded too, under the caller that tried.
    let refused: Vec<String> = a
        .all(keys::ADMIN_TOKEN)
        .await
        .iter()
        .filter_map(|r| r.event.clone())
        .filter(|e| e.event_type == "audit_read" && !e.success)
        .map(|e| format!("{} {}", e.principal, e.status_code))
        .collect();
    assert_eq!(
        refused,
        vec![
            "app:test PERMISSION_DENIED".to_string(),
            "vault-service PERMISSION_DENIED".to_string()
        ]
    );
}

async fn queries_filter_and_page_oldest_first(a: &Audit) {
    a.append(1..=12).await;
    let q = |req: pb::QueryEventsRequest| async move {
        a.reader()
            .query_events(req)
            .await
            .unwrap()
            .into_inner()
            .records
            .iter()
            .map(|r| r.sequence)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        q(pb::QueryEventsRequest {
            principal: "app:p0".into(),
            ..Default::default()
        })
        .await,
        vec![3, 6, 9, 12]
    );
    assert_eq!(
        q(pb::QueryEventsRequest {
            success: Some(false),
            ..Default::default()
        })
        .await,
        vec![4, 8, 12]
    );
    assert_eq!(
        q(pb::QueryEventsRequest {
            event_type: "secret_access".into(),
            secret_name: "prod/app/s0".into(),
            ..Default::default()
        })
        .await,
        vec![2, 4, 6, 8, 10, 12]
    );
    let t = |s: i64| {
        Some(prost_types::Timestamp {
            seconds: 1_790_000_000 + s,
            nanos: 0,
        })
    };
    assert_eq!(
        q(pb::QueryEventsRequest {
            start_time: t(3),
            end_time: t(6),
            ..Default::default()
        })
        .await,
        vec![3, 4, 5]
    );
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = a
            .reader()
            .query_events(pb::QueryEventsRequest {
                page_size: 5,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(emitted(&page.records).into_iter().map(|(s, _)| s));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (1..=12).collect::<Vec<_>>());
    let err = a
        .reader()
        .query_events(pb::QueryEventsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Tail: live records after the position given.
    let mut tail = a
        .reader()
        .tail_events(pb::TailEventsRequest { after_sequence: 10 })
        .await
        .unwrap()
        .into_inner();
    for want in [11, 12] {
        assert_eq!(tail.message().await.unwrap().unwrap().sequence, want);
    }
    let stored = a.append(13..=13).await.last_sequence;
    // Reads recorded since (this test's queries) stream by first.
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = tail.message().await.unwrap().unwrap();
            if r.event.as_ref().unwrap().service == "vault-service" {
                return r;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (next.sequence, next.event.unwrap().emitter_sequence),
        (stored, 13)
    );
}

/// Appends 12 events with checkpoints, then applies `tamper` and expects verify to name
/// `first_bad` with a message containing `hint`.
async fn tampered(a: &Audit, tamper: &[&str], first_bad: u64, hint: &str) {
    for chunk in [1..=5, 6..=10, 11..=12] {
        a.append(chunk).await;
    }
    a.wait_for_checkpoint(12).await;
    assert!(a.verify().await.valid);
    for statement in tamper {
        a.sql(statement).await;
    }
    let v = a.verify().await;
    assert!(!v.valid, "{tamper:?}: {v:?}");
    assert_eq!(v.first_bad_sequence, first_bad, "{tamper:?}: {v:?}");
    assert!(v.problem.contains(hint), "{tamper:?}: {}", v.problem);
}

async fn a_flipped_byte_is_named_by_verify(a: &Audit) {
    // Change what record 7 says happened (its stored event bytes), keeping the hash.
    let e = sentia_proto::audit::v1::AuditEvent {
        success: false,
        ..event(7)
    };
    let hex: String = prost::Message::encode_to_vec(&e)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let literal = if a.db.starts_with("sqlite") {
        format!("X'{hex}'")
    } else {
        format!("'\\x{hex}'::bytea")
    };
    let statement = format!("UPDATE audit_records SET event = {literal} WHERE sequence = 7");
    tampered(a, &[&statement], 7, "altered").await;
}

async fn a_deleted_row_is_named_by_verify(a: &Audit) {
    tampered(
        a,
        &["DELETE FROM audit_records WHERE sequence = 8"],
        8,
        "missing",
    )
    .await;
}

async fn reordered_rows_are_named_by_verify(a: &Audit) {
    // Swap records 3 and 4 wholesale (event, hashes) while keeping the sequence column.
    tampered(
        a,
        &[
            "UPDATE audit_records SET sequence = -3 WHERE sequence = 3",
            "UPDATE audit_records SET sequence = 3 WHERE sequence = 4",
            "UPDATE audit_records SET sequence = 4 WHERE sequence = -3",
        ],
        3,
        "reordered",
    )
    .await;
}

async fn a_tail_truncated_after_a_checkpoint_is_named_by_verify(a: &Audit) {
    // The reads since (each recorded) follow the gap.
    tampered(
        a,
        &["DELETE FROM audit_records WHERE sequence > 10"],
        11,
        "missing",
    )
    .await;
}

/// The head row pointed back at record 10, so new records chain on from it consistently.
const HEAD_AT_10: &str = "UPDATE chain_head SET sequence = 10, hash = (SELECT hash FROM audit_records WHERE sequence = 10)";

async fn a_tail_cut_across_a_checkpoint_with_the_head_rewritten_is_named_by_verify(a: &Audit) {
    for chunk in [1..=5, 6..=10, 11..=12] {
        a.append(chunk).await;
    }
    a.wait_for_checkpoint(12).await;
    a.sql("DELETE FROM audit_records WHERE sequence > 10").await;
    a.sql(HEAD_AT_10).await;
    let v = a.verify().await;
    assert!(!v.valid, "{v:?}");
    assert!(v.first_bad_sequence >= 11, "{v:?}");
    assert!(
        v.problem.contains("checkpoint") || v.problem.contains("truncated"),
        "{v:?}"
    );
}

async fn a_tail_cut_with_its_checkpoints_and_head_rewritten_is_named_by_verify(a: &Audit) {
    for chunk in [1..=5, 6..=10, 11..=12] {
        a.append(chunk).await;
    }
    a.wait_for_checkpoint(12).await;
    // Records, checkpoints and head all cut back: self-consistent in the database, but not
    // with what this audit-service signed.
    a.sql("DELETE FROM audit_records WHERE sequence > 10").await;
    a.sql("DELETE FROM checkpoints WHERE sequence > 10").await;
    a.sql(HEAD_AT_10).await;
    let v = a.verify().await;
    assert!(!v.valid, "{v:?}");
    assert!(v.first_bad_sequence >= 11, "{v:?}");
    assert!(v.problem.contains("this audit-service"), "{v:?}");
}

async fn an_edited_index_column_is_named_by_verify_and_refused_by_queries(a: &Audit) {
    // Record 6 is app:p0's; moved to another principal it would drop out of app:p0's history.
    tampered(
        a,
        &["UPDATE audit_records SET principal = 'app:nobody' WHERE sequence = 6"],
        6,
        "principal",
    )
    .await;
    let err = a
        .reader()
        .query_events(pb::QueryEventsRequest {
            principal: "app:nobody".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains("record 6"), "{err:?}");
    a.sql("UPDATE audit_records SET principal = 'app:p0', time = 0 WHERE sequence = 6")
        .await;
    let v = a.verify().await;
    assert_eq!(v.first_bad_sequence, 6, "{v:?}");
    assert!(v.problem.contains("time"), "{v:?}");
}

async fn an_emitter_id_belongs_to_the_identity_that_first_used_it(a: &Audit) {
    a.append(1..=3).await;
    // Another service identity tries to claim vault-service's next sequence numbers, so its
    // real events would be dropped as replays.
    let err = a
        .client(keys::SCHEDULER_KEY_TOKEN)
        .append_events(pb::AppendEventsRequest {
            events: (4..=10).map(event).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("'vault-service'") && err.message().contains("'rotation-scheduler'"),
        "{err:?}"
    );
    let real = a.append(4..=6).await;
    assert_eq!(real.duplicates, 0, "the real events are stored");
    let records = a.all(keys::ADMIN_TOKEN).await;
    assert_eq!(
        emitted(&records)
            .iter()
            .map(|(_, e)| *e)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    // Its own emitter ids it may use.
    let own = pb::AuditEvent {
        service: "rotation-scheduler".into(),
        emitter_id: "emitter-2".into(),
        ..event(1)
    };
    a.client(keys::SCHEDULER_KEY_TOKEN)
        .append_events(pb::AppendEventsRequest { events: vec![own] })
        .await
        .unwrap();
    assert!(a.verify().await.valid);
}

async fn concurrent_appends_committed_together_each_get_their_own_outcome(a: &Audit) {
    a.append(1..=1).await;
    // Appends arriving together share commits: 40 from vault-service (each event sent twice,
    // by two appends), 10 from rotation-scheduler under vault-service's emitter id, and two
    // identities racing for a fresh emitter id.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40u64 {
        let mut c = a.emitter();
        let first = 2 + (i / 2) * 3;
        calls.spawn(async move {
            let r = c
                .append_events(pb::AppendEventsRequest {
                    events: (first..=first + 2).map(event).collect(),
                })
                .await;
            ("vault", r.map(|r| r.into_inner().duplicates))
        });
    }
    for i in 0..10u64 {
        let mut c = a.client(keys::SCHEDULER_KEY_TOKEN);
        calls.spawn(async move {
            let r = c
                .append_events(pb::AppendEventsRequest {
                    events: vec![event(1000 + i)],
                })
                .await;
            ("intruder", r.map(|r| r.into_inner().duplicates))
        });
    }
    for (who, token) in [
        ("race-vault", keys::SERVICE_TOKEN),
        ("race-scheduler", keys::SCHEDULER_KEY_TOKEN),
    ] {
        let mut c = a.client(token);
        calls.spawn(async move {
            let fresh = pb::AuditEvent {
                emitter_id: "emitter-contested".into(),
                ..event(1)
            };
            let r = c
                .append_events(pb::AppendEventsRequest {
                    events: vec![fresh],
                })
                .await;
            (who, r.map(|r| r.into_inner().duplicates))
        });
    }
    let (mut duplicates, mut race_won) = (0, 0);
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            ("vault", r) => duplicates += r.expect("vault-service's own appends are stored"),
            ("intruder", r) => assert_eq!(
                r.expect_err("another identity's claim is refused").code(),
                Code::PermissionDenied
            ),
            (_, Ok(_)) => race_won += 1,
            (_, Err(e)) => assert_eq!(e.code(), Code::PermissionDenied, "{e:?}"),
        }
    }
    assert_eq!(duplicates, 60, "each event sent twice is stored once");
    assert_eq!(
        race_won, 1,
        "exactly one identity owns a contested emitter id"
    );
    let records = a.all(keys::ADMIN_TOKEN).await;
    let mut stored: Vec<u64> = emitted(&records)
        .iter()
        .filter(|(s, _)| {
            records[(*s - 1) as usize]
                .event
                .as_ref()
                .is_some_and(|e| e.emitter_id == "emitter-1")
        })
        .map(|(_, e)| *e)
        .collect();
    stored.sort_unstable();
    assert_eq!(
        stored,
        (1..=61).collect::<Vec<_>>(),
        "every event once, none of the intruder's"
    );
    let sequences: Vec<u64> = records.iter().map(|r| r.sequence).collect();
    assert_eq!(
        sequences,
        (1..=records.len() as u64).collect::<Vec<_>>(),
        "no gaps"
    );
    assert!(a.verify().await.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_need_audit_read_on_every_path_from_the_shared_policy_file() {
    let file = std::env::temp_dir().join(format!("{}.toml", sentia_testkit::unique("policies")));
    std::fs::write(
        &file,
        r#"
[auditor]
rules = [{ paths = ["**"], capabilities = ["audit-read"] }]
[prod_auditor]
rules = [{ paths = ["prod/**"], capabilities = ["audit-read"] }]
[reader]
rules = [{ paths = ["**"], capabilities = ["read", "list"] }]
"#,
    )
    .unwrap();
    let policy_file = file.display().to_string();
    let Some(a) = Audit::start_with(false, &[("SENTIA_POLICY_FILE", policy_file.as_str())]).await
    else {
        return;
    };
    let at = &a;
    let query = |token: String| async move {
        at.client(&token)
            .query_events(pb::QueryEventsRequest::default())
            .await
    };
    query(a.jwt(&["auditor"]).await).await.unwrap();
    for policies in [&["prod_auditor"][..], &["reader"], &["system_admin"]] {
        let err = query(a.jwt(policies).await).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{policies:?}: {err:?}");
        assert!(err.message().contains("audit-read"), "{err:?}");
    }
    // The static admin identity still reads; a JWT may not append, and that refusal is in
    // the log too.
    let err = a
        .client(&a.jwt(&["auditor"]).await)
        .append_events(pb::AppendEventsRequest {
            events: vec![event(1)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let outcomes: Vec<String> = a
        .all(keys::ADMIN_TOKEN)
        .await
        .iter()
        .filter_map(|r| r.event.clone())
        .filter(|e| e.service == "audit-service")
        .map(|e| format!("{} {} {}", e.event_type, e.operation, e.status_code))
        .collect();
    assert_eq!(
        outcomes,
        [
            "audit_read query OK",
            "audit_read query PERMISSION_DENIED",
            "audit_read query PERMISSION_DENIED",
            "audit_read query PERMISSION_DENIED",
            "audit_write append PERMISSION_DENIED",
            "audit_read query OK",
        ],
        "every call, refused or not, in the order made"
    );
    a.stop().await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chain_raises_an_alert_from_the_continuous_check() {
    let Some(a) = Audit::start_with(
        false,
        &[
            ("SENTIA_AUDIT_VERIFY_INTERVAL", "100ms"),
            ("SENTIA_AUDIT_FULL_VERIFY_INTERVAL", "300ms"),
        ],
    )
    .await
    else {
        return;
    };
    a.append(1..=8).await;
    a.wait_for_checkpoint(8).await;
    // An edit behind the verified point: found by the periodic full check.
    a.sql("UPDATE audit_records SET secret_name = 'prod/elsewhere' WHERE sequence = 3")
        .await;
    let broken = |x: &pb::Alert| x.rule == "AuditChainBroken";
    let alert = a
        .alerts_until(|all| all.iter().any(broken))
        .await
        .into_iter()
        .find(broken)
        .expect("no AuditChainBroken alert");
    assert_eq!(alert.severity, pb::Severity::Critical as i32);
    assert_eq!(alert.sequences, vec![3]);
    assert!(alert.summary.contains("secret_name"), "{alert:?}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_up_to_a_checkpoint_and_the_rest_still_verifies() {
    let Some(a) = Audit::start_with(
        false,
        &[
            ("SENTIA_AUDIT_RETENTION", "2s"),
            ("SENTIA_RETENTION_CHECK", "100ms"),
        ],
    )
    .await
    else {
        return;
    };
    a.append(1..=7).await;
    a.wait_for_checkpoint(7).await;
    // Wait until the purge has taken everything up to the checkpoint.
    let mut purged = false;
    for _ in 0..300 {
        let left = a.all(keys::ADMIN_TOKEN).await;
        if emitted(&left).is_empty() {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(purged, "records past retention were not purged");
    // The next records are younger than the 2 s retention for the rest of the test.
    a.append(8..=10).await;
    let v = a.verify().await;
    assert!(v.valid, "{v:?}");
    assert!(v.records_checked >= 3, "{v:?}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_oldest_records_is_not_a_purge_and_verify_names_it() {
    // No retention here: a purge racing the deletion could legitimately remove the evidence.
    let Some(a) = Audit::start(false).await else {
        return;
    };
    a.append(1..=7).await;
    a.wait_for_checkpoint(7).await;
    a.append(8..=10).await;
    assert!(a.verify().await.valid);
    // Nothing anchors what is left: no signed checkpoint at the record before the new start.
    a.sql("DELETE FROM audit_records WHERE sequence <= 2").await;
    let v = a.verify().await;
    assert!(!v.valid, "{v:?}");
    assert!(v.problem.contains("no signed checkpoint"), "{v:?}");
    a.stop().await;
}

fn refused(i: u64, seconds: i64) -> pb::AuditEvent {
    pb::AuditEvent {
        time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        principal: "app:mallory".into(),
        success: false,
        status_code: "PERMISSION_DENIED".into(),
        ..event(i)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_raise_stored_alerts_that_can_be_acknowledged() {
    let Some(a) = Audit::start(false).await else {
        return;
    };
    // Five refusals inside five minutes: quiet. The sixth: UnauthorizedSecretAccess.
    let t0 = 1_790_000_000;
    let events: Vec<_> = (1..=5).map(|i| refused(i, t0 + i as i64)).collect();
    a.emitter()
        .append_events(pb::AppendEventsRequest { events })
        .await
        .unwrap();
    let fd = pb::AuditEvent {
        event_type: "failed_decryption".into(),
        success: false,
        status_code: "DATA_LOSS".into(),
        ..event(6)
    };
    a.emitter()
        .append_events(pb::AppendEventsRequest { events: vec![fd] })
        .await
        .unwrap();
    let rules = a.alerts_until(|all| !all.is_empty()).await;
    assert_eq!(
        rules.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>(),
        vec!["FailedDecryption"],
        "five refusals must not fire"
    );
    let seventh = a
        .emitter()
        .append_events(pb::AppendEventsRequest {
            events: vec![refused(7, t0 + 299)],
        })
        .await
        .unwrap()
        .into_inner()
        .last_sequence;
    let alerts = a.alerts_until(|all| all.len() == 2).await;
    assert_eq!(
        alerts[0].rule, "UnauthorizedSecretAccess",
        "newest first: {alerts:?}"
    );
    assert_eq!(alerts[0].principal, "app:mallory");
    assert_eq!(alerts[0].severity, pb::Severity::Critical as i32);
    assert_eq!(alerts[0].sequences, vec![seventh]);

    let acked = a
        .reader()
        .acknowledge_alert(pb::AcknowledgeAlertRequest {
            id: alerts[0].id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(acked.acknowledged);
    assert_eq!(acked.acknowledged_by, "operator");
    let open = a.alerts(false).await;
    assert_eq!(open.len(), 1);
    let all = a.alerts(true).await;
    assert_eq!(all.len(), 2);
    let err = a
        .reader()
        .acknowledge_alert(pb::AcknowledgeAlertRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let dev = a.jwt(&["developer"]).await;
    let err = a
        .client(&dev)
        .list_alerts(pb::ListAlertsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_alert_windows_through_redis() {
    use audit_service::alerts::{Engine, Rate, Rules, Windows};
    let Ok(url) = std::env::var("SENTIA_TEST_REDIS_URL") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but SENTIA_TEST_REDIS_URL is not set"
        );
        eprintln!("SKIPPED: redis test (SENTIA_TEST_REDIS_URL not set; run `bash tests/run`)");
        return;
    };
    let prefix = format!("{}:", keys::unique("alerts"));
    let replica = || {
        let client = redis::Client::open(url.as_str()).unwrap();
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(
            client,
            redis::aio::ConnectionManagerConfig::new(),
        )
        .unwrap();
        Engine::new(
            Rules {
                failed_access: Rate::parse("5/5m").unwrap(),
                high_frequency: Rate::parse("1000/1m").unwrap(),
                sources: Default::default(),
                drill_overdue_after: None,
            },
            Windows::Redis {
                conn,
                prefix: prefix.clone(),
            },
        )
    };
    let (a, b) = (replica(), replica());
    let t0 = 1_790_000_000;
    let mut fired = Vec::new();
    for i in 1..=6u64 {
        // Alternate replicas: neither sees six refusals by itself.
        let engine = if i % 2 == 0 { &b } else { &a };
        let raised = engine.evaluate(i, &refused(i, t0 + i as i64)).await;
        fired.extend(raised.into_iter().map(|r| (i, r.rule)));
    }
    assert_eq!(fired, vec![(6, "UnauthorizedSecretAccess".to_string())]);
}

/// Headers (lowercase names) and body of one request the receiver got.
type Delivery = (std::collections::HashMap<String, String>, String);

/// A real HTTP/1.1 server that records requests and answers with scripted statuses.
struct Receiver {
    url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn start(statuses: Vec<u16>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/sentia", listener.local_addr().unwrap());
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = got.clone();
        tokio::spawn(async move {
            let mut statuses = statuses.into_iter();
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (headers, body) = loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        break (String::new(), String::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if rest.len() >= len {
                            break (head.to_string(), rest[..len].to_string());
                        }
                    }
                };
                let map = headers
                    .lines()
                    .skip(1)
                    .filter_map(|l| {
                        l.split_once(':')
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    })
                    .collect();
                record.lock().unwrap().push((map, body));
                let status = statuses.next().unwrap_or(200);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        Self { url, got }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_the_webhook_signed_and_retried_after_a_failure() {
    let hook = Receiver::start(vec![503]).await;
    let secret = "webhook-secret-for-tests-0123456789";
    let Some(a) = Audit::start_with(
        false,
        &[
            ("SENTIA_ALERT_WEBHOOK_URL", hook.url.as_str()),
            ("SENTIA_ALERT_WEBHOOK_SECRET", secret),
        ],
    )
    .await
    else {
        return;
    };
    let fd = pb::AuditEvent {
        event_type: "failed_decryption".into(),
        success: false,
        status_code: "DATA_LOSS".into(),
        ..event(1)
    };
    a.emitter()
        .append_events(pb::AppendEventsRequest { events: vec![fd] })
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..200 {
        got = hook.got.lock().unwrap().clone();
        if got.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(got.len(), 2, "one refused delivery (503), one retry");
    for (headers, body) in &got {
        let ts: i64 = headers["x-sentia-timestamp"].parse().unwrap();
        assert!(
            (sentia_proto::wkt::now_secs() - ts).abs() < 60,
            "fresh timestamp"
        );
        let want =
            sentia_runtime::webhook::SignedPost::signature(secret.as_bytes(), ts, body).unwrap();
        assert_eq!(
            headers["x-sentia-signature"], want,
            "HMAC over timestamp.body"
        );
        let forged =
            sentia_runtime::webhook::SignedPost::signature(b"another-secret-entirely", ts, body)
                .unwrap();
        assert_ne!(headers["x-sentia-signature"], forged);
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["rule"], "FailedDecryption");
        assert_eq!(v["severity"], "critical");
        assert_eq!(headers["content-type"], "application/json");
    }
    a.stop().await;
}

#[test]
fn a_webhook_needs_a_signing_secret() {
    let err = audit_service::Config::from_source(&MapSource::from_pairs([
        ("SENTIA_ALLOW_PLAINTEXT", "true"),
        ("SENTIA_ALERT_WEBHOOK_URL", "https://hooks.example.com/x"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(err.contains("SENTIA_ALERT_WEBHOOK_SECRET"), "{err}");
    let err = audit_service::Config::from_source(&MapSource::from_pairs([
        ("SENTIA_ALLOW_PLAINTEXT", "true"),
        ("SENTIA_ALERT_FAILED_ACCESS", "lots"),
        ("SENTIA_ALERT_SOURCES", "app:x=not-a-network"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("SENTIA_ALERT_FAILED_ACCESS") && err.contains("SENTIA_ALERT_SOURCES"),
        "{err}"
    );
}
