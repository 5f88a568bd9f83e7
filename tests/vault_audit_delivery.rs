//! vault-service with a real audit-service: every RPC outcome becomes an event; with
//! audit-service down events are spooled and later delivered in order, once; with neither
//! audit-service nor the spool, operations fail closed.
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;
use sentia_testkit::audit as audit_support;

use std::time::Duration;

use audit_support::AuditService;
use sentia_proto::audit::v1 as apb;
use sentia_proto::audit::v1::audit_service_client::AuditServiceClient;
use sentia_proto::vault::v1 as pb;
use sentia_runtime::MapSource;
use sentia_runtime::client::{AuthedChannel, CallContext, connect_lazy};
use support::{Proxy, Stack, get, keys};
use tonic::Code;

struct Audited {
    stack: Stack,
    proxy: Proxy,
    audit_addr: String,
    audit: AuditService,
}

impl Audited {
    async fn start(spool: &str) -> Self {
        Self::start_with(spool, "remote").await
    }

    /// With `SENTIA_AUDIT_DURABILITY=durability` at vault-service.
    async fn start_with(spool: &str, durability: &str) -> Self {
        // audit-service's listener first: key-service audits into it and it signs checkpoints
        // with key-service.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let audit_addr = listener.local_addr().unwrap().to_string();
        let key_spool = spool_path();
        let keys = keys::Running::start(
            &keys::sqlite_url(),
            &[
                ("SENTIA_AUDIT_DISABLED", "false"),
                ("SENTIA_AUDIT_SERVICE_ADDR", audit_addr.as_str()),
                ("SENTIA_AUDIT_SERVICE_TOKEN", keys::SERVICE_TOKEN),
                ("SENTIA_AUDIT_SPOOL", key_spool.as_str()),
            ],
        )
        .await;
        let audit = AuditService::start(listener, &keys.addr).await;
        let proxy = Proxy::to(&audit_addr).await;
        let stack = Stack::start_vault(
            keys,
            keys::sqlite_url(),
            &[
                ("SENTIA_AUDIT_DISABLED", "false"),
                ("SENTIA_AUDIT_SERVICE_ADDR", proxy.addr.as_str()),
                ("SENTIA_AUDIT_SERVICE_TOKEN", keys::SERVICE_TOKEN),
                ("SENTIA_AUDIT_SPOOL", spool),
                ("SENTIA_AUDIT_TIMEOUT", "300ms"),
                ("SENTIA_AUDIT_DURABILITY", durability),
            ],
        )
        .await;
        Self {
            stack,
            proxy,
            audit_addr,
            audit,
        }
    }

    fn reader(&self) -> AuditServiceClient<AuthedChannel> {
        let ch = connect_lazy(&self.audit_addr, None).unwrap();
        AuditServiceClient::new(
            CallContext::with_token(Some(keys::ADMIN_TOKEN))
                .unwrap()
                .wrap(ch),
        )
    }

    /// vault-service's events, in log order.
    async fn events(&self) -> Vec<apb::AuditEvent> {
        self.all_events()
            .await
            .into_iter()
            .filter(|e| e.service == "vault-service")
            .collect()
    }

    /// Every service's events, in log order.
    async fn all_events(&self) -> Vec<apb::AuditEvent> {
        keys::audit_records(&self.reader())
            .await
            .into_iter()
            .filter_map(|r| r.event)
            .collect()
    }

    /// Events of vault-service until at least `n` are stored.
    async fn wait_for(&self, n: usize) -> Vec<apb::AuditEvent> {
        for _ in 0..200 {
            let e = self.events().await;
            if e.len() >= n {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("audit-service never reached {n} events");
    }

    async fn stop(self) {
        self.stack.stop().await;
        self.audit.stop().await;
    }
}

fn spool_path() -> String {
    sentia_testkit::scratch_path(&format!("{}.spool", support::unique("vault")))
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_recorded_with_its_outcome_and_never_its_value() {
    let a = Audited::start(&spool_path()).await;
    let s = &a.stack;
    let canary = b"PLAINTEXT-CANARY-audit-51e2";
    s.put("prod/app/key", canary).await;
    let mut root = s.secrets(&s.root_token).await;
    root.get_secret(get("prod/app/key")).await.unwrap();
    assert_eq!(
        root.get_secret(get("prod/app/none"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let (dev, _) = s.login_as(&["developer"]).await;
    let denied = s
        .secrets(&dev)
        .await
        .get_secret(get("prod/app/key"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let _ = s
        .auth("")
        .await
        .login(pb::LoginRequest {
            role_id: "nobody".into(),
            secret_id: "x".into(),
        })
        .await;
    s.put("prod/app/key", b"second").await;
    root.restore_secret_version(pb::RestoreSecretVersionRequest {
        path: "prod/app/key".into(),
        version: 1,
        expected_version: None,
        request_id: String::new(),
    })
    .await
    .unwrap();
    let empty_batch = root
        .batch_get_secrets(pb::BatchGetSecretsRequest { requests: vec![] })
        .await
        .unwrap_err();
    assert_eq!(empty_batch.code(), Code::InvalidArgument);

    let events = a.wait_for(10).await;
    let summary: Vec<(String, String, String, bool, String)> = events
        .iter()
        .map(|e| {
            (
                e.event_type.clone(),
                e.operation.clone(),
                e.secret_name.clone(),
                e.success,
                e.status_code.clone(),
            )
        })
        .collect();
    let has = |t: &str, op: &str, name: &str, ok: bool, code: &str| {
        summary.contains(&(t.into(), op.into(), name.into(), ok, code.into()))
    };
    assert!(
        has("secret_write", "write", "prod/app/key", true, "OK"),
        "{summary:#?}"
    );
    assert!(
        has("secret_access", "read", "prod/app/key", true, "OK"),
        "{summary:#?}"
    );
    assert!(
        has("secret_access", "read", "prod/app/none", false, "NOT_FOUND"),
        "{summary:#?}"
    );
    assert!(
        has(
            "secret_access",
            "read",
            "prod/app/key",
            false,
            "PERMISSION_DENIED"
        ),
        "{summary:#?}"
    );
    assert!(
        has("admin", "create_credential", "", true, "OK")
            || summary.iter().any(|s| s.1 == "create_credential"),
        "{summary:#?}"
    );
    assert!(has("login", "login", "", true, "OK"), "{summary:#?}");
    assert!(
        has("secret_write", "restore", "prod/app/key", true, "OK"),
        "a restore is one write event of its own: {summary:#?}"
    );
    assert!(
        has("secret_access", "batch_read", "", false, "INVALID_ARGUMENT"),
        "a batch refused as a whole is recorded: {summary:#?}"
    );
    assert!(
        has("login", "login", "", false, "UNAUTHENTICATED"),
        "{summary:#?}"
    );
    let denied_event = events
        .iter()
        .find(|e| e.status_code == "PERMISSION_DENIED")
        .unwrap();
    assert!(
        denied_event.principal.starts_with("app:"),
        "{denied_event:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.service == "vault-service" && !e.request_id.is_empty())
    );
    assert!(events.iter().any(|e| e.source_ip == "127.0.0.1"));
    let dump = format!("{events:?}");
    assert!(
        !dump.contains("PLAINTEXT-CANARY"),
        "a value reached the audit log"
    );
    assert!(
        !dump.contains(&s.root_token),
        "a token reached the audit log"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.emitter_sequence).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_an_audit_outage_are_spooled_then_delivered_in_order_exactly_once() {
    outage_events_are_delivered_in_order_exactly_once("remote").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_events_from_an_outage_are_shipped_in_order_exactly_once_with_fsync() {
    outage_events_are_delivered_in_order_exactly_once("local-fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_events_from_an_outage_are_shipped_in_order_exactly_once_without_fsync() {
    outage_events_are_delivered_in_order_exactly_once("local").await;
}

async fn outage_events_are_delivered_in_order_exactly_once(durability: &str) {
    let a = Audited::start_with(&spool_path(), durability).await;
    let s = &a.stack;
    s.put("prod/app/before", b"x").await;
    a.wait_for(1).await;

    a.proxy.cut();
    for i in 0..5 {
        // Writes keep working while audit-service is unreachable: their events are spooled.
        s.put(&format!("prod/app/during-{i}"), b"x").await;
    }
    a.proxy.restore();
    s.put("prod/app/after", b"x").await;

    // (The harness's readiness probe is a refused login: event 1.)
    a.wait_for(8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = a.events().await;
    let names: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "secret_write")
        .map(|e| e.secret_name.clone())
        .collect();
    let mut want = vec!["prod/app/before".to_string()];
    want.extend((0..5).map(|i| format!("prod/app/during-{i}")));
    want.push("prod/app/after".into());
    assert_eq!(names, want, "none lost, none duplicated, order kept");
    let seqs: Vec<u64> = events.iter().map(|e| e.emitter_sequence).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_audit_service_down_and_no_spool_space_operations_fail_closed() {
    // /dev/full accepts the open and fails every write with ENOSPC.
    let a = Audited::start("/dev/full").await;
    let s = &a.stack;
    s.put("prod/app/key", b"v1").await;
    let before = a.wait_for(1).await.len();
    a.proxy.cut();
    let mut client = s.secrets(&s.root_token).await;
    let err = client.get_secret(get("prod/app/key")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("audit"), "{err:?}");

    // Changes whose events cannot be recorded are rolled back before they take effect.
    let err = client
        .put_secret(pb::PutSecretRequest {
            path: "prod/app/key".into(),
            value: b"v2".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("nothing was changed"), "{err:?}");
    let err = client
        .destroy_secret_versions(pb::DestroySecretVersionsRequest {
            path: "prod/app/key".into(),
            versions: vec![1],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let err = client
        .put_secret(pb::PutSecretRequest {
            path: "prod/app/new".into(),
            value: b"n".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    a.proxy.restore();
    let got = client
        .get_secret(get("prod/app/key"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.value.as_slice(), got.version),
        (b"v1".as_slice(), 1),
        "neither the put nor the destroy happened"
    );
    let err = client.get_secret(get("prod/app/new")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "the new secret was not created");
    // The log holds the first write and the reads after the outage, and nothing claims the
    // refused changes succeeded.
    let events = a.wait_for(before + 2).await;
    assert!(
        !events
            .iter()
            .any(|e| e.success && (e.operation == "destroy" || e.secret_name == "prod/app/new")),
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.operation == "write" && e.success)
            .count(),
        1
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_journal_unusable_local_durabilities_fail_closed() {
    for durability in ["local-fsync", "local"] {
        // audit-service is up, but the journal — where a local durability records first —
        // fails every write.
        let a = Audited::start_with("/dev/full", durability).await;
        let s = &a.stack;
        let err = s
            .secrets(&s.root_token)
            .await
            .put_secret(pb::PutSecretRequest {
                path: "prod/app/unrecorded".into(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{durability}: {err:?}");
        assert!(err.message().contains("nothing was changed"), "{err:?}");
        let pool = sqlx::AnyPool::connect(&s.database_url).await.unwrap();
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM secrets")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "{durability}: the write did not happen");
        pool.close().await;
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_event_is_shipped_by_the_next_start_after_a_stop_during_an_outage() {
    let journal = spool_path();
    let a = Audited::start_with(&journal, "local-fsync").await;
    a.stack.put("prod/app/before", b"x").await;
    a.wait_for(1).await;
    a.proxy.cut();
    // Answered once journaled; audit-service never saw it before vault-service stopped.
    a.stack.put("prod/app/while-down", b"x").await;
    let Audited {
        stack,
        proxy,
        audit_addr,
        audit,
    } = a;
    stack.stop().await;
    proxy.restore();
    // The next start of the service (same journal) ships what is left.
    let source = MapSource::from_pairs([
        ("SENTIA_AUDIT_SERVICE_ADDR", audit_addr.as_str()),
        ("SENTIA_AUDIT_SERVICE_TOKEN", keys::SERVICE_TOKEN),
        ("SENTIA_AUDIT_SPOOL", journal.as_str()),
        ("SENTIA_AUDIT_DURABILITY", "local-fsync"),
    ]);
    let mut r = sentia_runtime::Reader::new(&source);
    let config = sentia_runtime::audit::AuditConfig::from_source(&mut r, "vault-service");
    let next = sentia_runtime::audit::Emitter::start("vault-service", &config).unwrap();
    let reader = AuditServiceClient::new(
        CallContext::with_token(Some(keys::ADMIN_TOKEN))
            .unwrap()
            .wrap(connect_lazy(&audit_addr, None).unwrap()),
    );
    let mut found = false;
    for _ in 0..200 {
        let page = reader
            .clone()
            .query_events(apb::QueryEventsRequest {
                secret_name: "prod/app/while-down".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // (The query itself is recorded under the same name, by audit-service.)
        let writes = page
            .records
            .iter()
            .filter(|r| {
                r.event
                    .as_ref()
                    .is_some_and(|e| e.service == "vault-service" && e.operation == "write")
            })
            .count();
        if writes > 0 {
            assert_eq!(writes, 1, "delivered once");
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "the journaled event never reached audit-service");
    drop(next);
    audit.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_service_records_its_operations_and_a_failed_decryption() {
    let a = Audited::start(&spool_path()).await;
    let s = &a.stack;
    // No data-key cache hit on the first read: vault-service asks key-service to unwrap.
    s.put("prod/app/key", b"v").await;
    let mut k = s.keys.client(Some(keys::CRYPTO_TOKEN)).await;
    let ct = k
        .encrypt(sentia_proto::keys::v1::EncryptRequest {
            key_name: "vault".into(),
            plaintext: b"x".to_vec(),
            encryption_context: b"ctx".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext;
    let err = k
        .decrypt(sentia_proto::keys::v1::DecryptRequest {
            ciphertext: ct,
            encryption_context: b"other".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut found = None;
    for _ in 0..100 {
        let all = a.all_events().await;
        if let Some(e) = all
            .iter()
            .find(|e| e.service == "key-service" && e.event_type == "failed_decryption")
        {
            found = Some((e.clone(), all));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (failed, all) = found.expect("no failed_decryption event from key-service");
    assert_eq!(
        (
            failed.operation.as_str(),
            failed.success,
            failed.status_code.as_str()
        ),
        ("decrypt", false, "INVALID_ARGUMENT")
    );
    assert_eq!(
        failed.principal, "crypto-tester",
        "the test called with crypto-tester's token"
    );
    assert!(
        all.iter()
            .any(|e| e.service == "key-service" && e.operation == "generate_data_key" && e.success)
    );

    // vault-service's identity may not sign checkpoints: refused, named, and recorded.
    let err = s
        .keys
        .client(Some(keys::SERVICE_TOKEN))
        .await
        .sign(sentia_proto::keys::v1::SignRequest {
            key_name: "audit-checkpoint".into(),
            message: b"forged checkpoint".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("'vault-service'") && err.message().contains("audit-checkpoint"),
        "{err:?}"
    );
    let mut refused = None;
    for _ in 0..100 {
        refused = a.all_events().await.into_iter().find(|e| {
            e.service == "key-service"
                && e.operation == "sign"
                && e.status_code == "PERMISSION_DENIED"
        });
        if refused.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("no refused sign event from key-service");
    assert_eq!(
        (
            refused.principal.as_str(),
            refused.secret_name.as_str(),
            refused.success
        ),
        ("vault-service", "audit-checkpoint", false)
    );
    a.stop().await;
}

/// audit-service asks vault-service who a reader is (WhoAmI): the root token may read, an
/// app token needs an audit-reading policy, and a token revoked at vault-service is refused
/// at audit-service too — at once with the answer cache off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_readers_are_checked_with_vault_service_so_root_works_and_revocation_counts() {
    let stack = Stack::start(support::Backend::Sqlite, &[]).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let audit_addr = listener.local_addr().unwrap().to_string();
    let audit = AuditService::start_on(
        listener,
        &stack.keys.addr,
        &keys::sqlite_url(),
        &[
            ("SENTIA_VAULT_SERVICE_ADDR", stack.addr.as_str()),
            ("SENTIA_IDENTITY_CACHE_TTL", "0s"),
        ],
    )
    .await;
    let query = |token: String| {
        let addr = audit_addr.clone();
        async move {
            AuditServiceClient::new(
                CallContext::with_token(Some(&token))
                    .unwrap()
                    .wrap(connect_lazy(&addr, None).unwrap()),
            )
            .query_events(apb::QueryEventsRequest::default())
            .await
            .map(|_| ())
        }
    };
    let mut ready = false;
    for _ in 0..200 {
        if query(stack.root_token.clone()).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "the root token reads the audit log");

    let (auditor, auditor_id) = stack.login_as(&["system_admin"]).await;
    let (developer, _) = stack.login_as(&["developer"]).await;
    query(auditor.clone()).await.unwrap();
    assert_eq!(
        query(developer).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    stack
        .auth(&stack.root_token)
        .await
        .revoke_token(pb::RevokeTokenRequest {
            token_id: auditor_id,
        })
        .await
        .unwrap();
    let refused = query(auditor).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    assert_eq!(
        query("not-a-token".into()).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    audit.stop().await;
    stack.stop().await;
}
