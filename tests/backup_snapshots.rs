//! Every service serves its own database's snapshot to an operator (ADR 8): the stream is
//! the database's tables, sealed data still sealed (a value written in clear is nowhere in
//! it), and each snapshot is in the audit log.
#![allow(clippy::unwrap_used)]

use sentia_proto::backup::v1::SnapshotRequest;
use sentia_proto::backup::v1::snapshot_service_client::SnapshotServiceClient;
use sentia_runtime::client::{CallContext, connect_lazy};
use sentia_testkit::{Sandbox, keys};

async fn snapshot(addr: &str, token: &str) -> Result<Vec<u8>, tonic::Status> {
    let ch = CallContext::with_token(Some(token))
        .unwrap()
        .wrap(connect_lazy(addr, None).unwrap());
    let mut stream = SnapshotServiceClient::new(ch)
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_streams_its_sealed_database_to_an_operator_and_the_audit_log_says_so() {
    let Some(sandbox) = Sandbox::builder()
        .audit()
        .scheduler(Default::default())
        .start()
        .await
    else {
        return;
    };
    let vault = sandbox.vault();
    vault
        .put("prod/app/canary", b"PLAINTEXT-CANARY-snapshot")
        .await;
    let root = vault.root_token.clone();
    let services = [
        (
            "key-service",
            sandbox.keys().addr.clone(),
            keys::ADMIN_TOKEN,
            "key_versions",
        ),
        (
            "vault-service",
            vault.addr.clone(),
            root.as_str(),
            "secret_versions",
        ),
        (
            "audit-service",
            sandbox.audit().addr.clone(),
            keys::ADMIN_TOKEN,
            "audit_records",
        ),
        (
            "rotation-scheduler",
            sandbox.scheduler().addr.clone(),
            root.as_str(),
            "rotations",
        ),
    ];
    for (service, addr, token, table) in &services {
        let bytes = snapshot(addr, token)
            .await
            .unwrap_or_else(|e| panic!("{service}: {e:?}"));
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("{\"dialect\""),
            "{service}: {}",
            &text[..80.min(text.len())]
        );
        assert!(
            text.contains(&format!("\"table\":\"{table}\"")),
            "{service} has no {table} table in its snapshot"
        );
        assert!(
            text.trim_end().ends_with('}'),
            "{service}: the last line closes the snapshot"
        );
        assert!(
            !text.contains("PLAINTEXT-CANARY"),
            "{service}: a value in clear"
        );
        assert!(!text.contains(&root), "{service}: a token in clear");
    }
    let events = sandbox.audit().events().await;
    for (service, ..) in &services {
        assert!(
            events
                .iter()
                .any(|e| e.service == *service && e.operation == "backup_snapshot" && e.success),
            "{service} did not record its snapshot"
        );
    }
    sandbox.stop().await;
}
