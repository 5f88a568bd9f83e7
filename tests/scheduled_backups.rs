//! Scheduled backups (ADR 8): rotation-scheduler's leader makes an archive of the whole
//! deployment with only the grants a backup needs, copies it to every destination, prunes what
//! is past retention, and records each outcome in the audit log — where a failure raises an
//! alert; and the monthly drill job's outcome, recorded the same way.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sentia_backup_ops::{Destination, Opener, Trust};
use sentia_crypto::MasterKey;
use sentia_proto::audit::v1 as apb;
use sentia_proto::backup::v1::SnapshotRequest;
use sentia_proto::backup::v1::snapshot_service_client::SnapshotServiceClient;
use sentia_proto::keys::v1::{BeginBackupRequest, RotateMasterKeyRequest, SignRequest};
use sentia_runtime::client::{AuthedChannel, CallContext, connect_lazy};
use sentia_testkit::{Sandbox, keys, unique};

fn channel(addr: &str, token: &str) -> AuthedChannel {
    CallContext::with_token(Some(token))
        .unwrap()
        .wrap(connect_lazy(addr, None).unwrap())
}

/// Waits until the audit log holds a `backup` event for which `pick` says Some, and returns
/// that; fails after two minutes naming the backup events seen.
async fn backup_event<T>(
    sandbox: &Sandbox,
    mut pick: impl FnMut(&[apb::AuditEvent]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let events: Vec<_> = sandbox
            .audit()
            .events()
            .await
            .into_iter()
            .filter(|e| e.event_type == "backup")
            .collect();
        if let Some(found) = pick(&events) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no such backup event; seen: {:?}",
            events
                .iter()
                .map(|e| (&e.operation, &e.secret_name, &e.status_code))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn alerts(sandbox: &Sandbox) -> Vec<apb::Alert> {
    sandbox.audit().alerts().await
}

/// Waits (up to a minute) for an alert of `rule` whose summary mentions `about`: alerts are
/// evaluated after the events are stored.
async fn alert(sandbox: &Sandbox, rule: &str, about: &str) -> apb::Alert {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = alerts(sandbox).await;
        if let Some(a) = all
            .iter()
            .find(|a| a.rule == rule && a.summary.contains(about))
        {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {rule} alert about {about:?}; raised: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The report of a drill that passed (of an empty archive).
fn passed() -> sentia_backup_restore::DrillReport {
    sentia_backup_restore::DrillReport {
        archive_id: "0123456789abcdef".into(),
        restored: sentia_backup_restore::Restored {
            rows: Default::default(),
            versions_checked: 0,
        },
        versions_read: 0,
        versions_deleted: 0,
        versions_destroyed: 0,
        audit_records_checked: 0,
        rotations_listed: 0,
    }
}

async fn trusted_keys(addr: &str) -> HashMap<String, Vec<u8>> {
    sentia_backup_ops::trusted_keys(channel(addr, keys::ADMIN_TOKEN))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_backs_up_into_every_destination_prunes_past_retention_and_alerts_on_a_failed_copy()
 {
    let Some((bucket, options)) = sentia_testkit::s3_destination() else {
        return;
    };
    // A bucket the server does not have: the copy there fails, the others are made.
    let missing = format!("s3://{}/x", unique("no-such-bucket").replace('_', "-"));
    let dir = sentia_testkit::scratch_path(&unique("sentia_scheduled"));
    std::fs::create_dir_all(&dir).unwrap();
    // An archive made 100 days ago, past the 90-day retention.
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let old = sentia_backup_ops::file_name(now_ms - 100 * 86_400_000, "0ld0ld0ld0");
    std::fs::write(dir.join(&old), b"an archive from long ago").unwrap();
    // What a backup killed two hours ago left, and one being written right now by someone.
    let (stale, fresh) = (
        dir.join("killed.sbk.partial"),
        dir.join("writing.sbk.partial"),
    );
    std::fs::File::create(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    std::fs::write(&fresh, b"in progress").unwrap();
    let master = MasterKey::generate().to_base64().to_string();
    let sandbox = Sandbox::builder()
        .key_setting("SENTIA_MASTER_KEY", &master)
        .scheduled_backups(
            &format!("{},{bucket},{missing}", dir.display()),
            options.clone(),
        )
        .start()
        .await
        .unwrap();

    let name = backup_event(&sandbox, |events| {
        events
            .iter()
            .find(|e| e.operation == "backup_created")
            .map(|e| e.secret_name.clone())
    })
    .await;
    assert!(
        !stale.exists() && fresh.exists(),
        "the run swept the stale leftover and nothing being written"
    );
    std::fs::remove_file(&fresh).unwrap();
    let created = backup_event(&sandbox, |events| {
        let pruned = events
            .iter()
            .any(|e| e.operation == "backup_pruned" && e.secret_name.ends_with(&format!("/{old}")));
        let copy_failed = events
            .iter()
            .find(|e| e.operation == "backup_copy_failed")?;
        pruned.then(|| copy_failed.clone())
    })
    .await;
    // The check of the stored copies that follows the first backup: both good copies verify;
    // the missing bucket cannot even be listed.
    backup_event(&sandbox, |events| {
        let checked = |at: &str| {
            events
                .iter()
                .any(|e| e.operation == "backup_checked" && e.secret_name == at)
        };
        let unlisted = events
            .iter()
            .any(|e| e.operation == "backup_check_failed" && e.secret_name == missing);
        (checked(dir.to_str().unwrap()) && checked(&bucket) && unlisted).then_some(())
    })
    .await;
    assert!(
        !sandbox
            .audit()
            .events()
            .await
            .iter()
            .any(|e| e.operation == "backup_check_failed" && e.secret_name.ends_with(&name)),
        "the new archive verifies everywhere it was copied"
    );
    assert_eq!(created.secret_name, missing);
    assert_eq!(created.principal, "rotation-scheduler");
    assert!(!created.success);
    alert(&sandbox, "BackupFailed", &missing).await;

    // The directory holds the new archive and not the old one; the bucket holds the same bytes.
    let local = Destination::parse(dir.to_str().unwrap()).unwrap();
    let listed: Vec<String> = local
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, [name.as_str()]);
    let remote = Destination::parse_with(&bucket, &options).unwrap();
    let copy = dir.join("downloaded");
    remote.download(&name, &copy).await.unwrap();
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(dir.join(&name)).unwrap()
    );
    // It opens with the master, its manifest is signed by this key-service, and its audit
    // chain verifies.
    let trust = Trust::Keys(trusted_keys(&sandbox.keys().addr).await);
    let opener = Opener::Master(MasterKey::from_base64(&master).unwrap());
    let checked = sentia_backup_ops::verify(&dir.join(&name), &opener, &trust).unwrap();
    assert_eq!(checked.manifest.services.len(), 4);
    assert_eq!(checked.manifest.audit.problem, None);
    // The scheduler can check a stored copy without the master: key-service opens it.
    let stored = dir.join(&name);
    let key = sentia_backup_ops::archive_key_from(
        channel(&sandbox.keys().addr, keys::SCHEDULER_KEY_TOKEN),
        &stored,
    )
    .await
    .unwrap();
    sentia_backup_ops::verify(&stored, &Opener::Archive(key), &trust).unwrap();
    let denied = sentia_backup_ops::archive_key_from(
        channel(&sandbox.keys().addr, keys::SERVICE_TOKEN),
        &stored,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(denied.contains("PermissionDenied"), "{denied}");
    // After a master rotation only the old master or the recovery key opens it.
    sandbox.keys().rotate_master().await;
    let refused = sentia_backup_ops::archive_key_from(
        channel(&sandbox.keys().addr, keys::SCHEDULER_KEY_TOKEN),
        &stored,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("FailedPrecondition") && refused.contains("master version 1"),
        "{refused}"
    );
    remote.delete(&name).await.unwrap();
    sandbox.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_backup_the_audit_log_refuses_to_snapshot_fails_and_raises_an_alert() {
    let dir = sentia_testkit::scratch_path(&unique("sentia_refused"));
    // audit-service does not name the scheduler in SENTIA_BACKUP_IDENTITIES (later pairs win).
    let sandbox = Sandbox::builder()
        .scheduled_backups(dir.to_str().unwrap(), Vec::new())
        .audit_setting("SENTIA_BACKUP_IDENTITIES", "")
        .start()
        .await
        .unwrap();
    let failed = backup_event(&sandbox, |events| {
        events
            .iter()
            .find(|e| e.operation == "backup_failed")
            .cloned()
    })
    .await;
    assert_eq!(failed.status_code, "PERMISSION_DENIED");
    assert!(!failed.success);
    alert(&sandbox, "BackupFailed", "PERMISSION_DENIED").await;
    // Nothing was left behind: no archive, no partial file.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    sandbox.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_identity_may_begin_backups_and_snapshot_the_keyring_and_nothing_more() {
    let sandbox = Sandbox::builder()
        .key_setting("SENTIA_BACKUP_IDENTITIES", "rotation-scheduler")
        .start()
        .await
        .unwrap();
    let keys = sandbox.keys();
    let scheduler = keys.system(Some(keys::SCHEDULER_KEY_TOKEN)).await;
    let begun = scheduler
        .clone()
        .begin_backup(BeginBackupRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(begun.archive_key.len(), 32);
    let mut stream = SnapshotServiceClient::new(channel(&keys.addr, keys::SCHEDULER_KEY_TOKEN))
        .snapshot(SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!stream.message().await.unwrap().unwrap().data.is_empty());
    let signed = keys
        .client(Some(keys::SCHEDULER_KEY_TOKEN))
        .await
        .sign(SignRequest {
            key_name: sentia_backup_ops::MANIFEST_KEY.into(),
            message: b"m".to_vec(),
        })
        .await;
    assert!(signed.is_ok(), "{signed:?}");

    // Not an administrator: no master rotation, no other signing key.
    let denied = scheduler
        .clone()
        .rotate_master_key(RotateMasterKeyRequest {
            secret_shares: 0,
            secret_threshold: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let denied = keys
        .client(Some(keys::SCHEDULER_KEY_TOKEN))
        .await
        .sign(SignRequest {
            key_name: sentia_backup_ops::CHECKPOINT_KEY.into(),
            message: b"m".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // Another service identity is not a backup maker.
    let denied = keys
        .system(Some(keys::SERVICE_TOKEN))
        .await
        .begin_backup(BeginBackupRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("SENTIA_BACKUP_IDENTITIES"),
        "{}",
        denied.message()
    );
    let denied = SnapshotServiceClient::new(channel(&keys.addr, keys::SERVICE_TOKEN))
        .snapshot(SnapshotRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_s_outcome_is_recorded_as_the_drill_identity_and_a_failed_one_raises_an_alert() {
    let sandbox = Sandbox::builder().audit().start().await.unwrap();
    let drill = || channel(&sandbox.audit().addr, keys::DRILL_TOKEN);
    sentia_backup_restore::record(drill(), "sentia-backup-good.sbk", &Ok(passed()))
        .await
        .unwrap();
    let failure = sentia_backup_ops::BackupError::Drill {
        step: "read secrets".into(),
        detail: "version 3 of prod/db does not decrypt".into(),
    };
    sentia_backup_restore::record(drill(), "sentia-backup-bad.sbk", &Err(failure))
        .await
        .unwrap();
    let (good, bad) = backup_event(&sandbox, |events| {
        let find = |op: &str| events.iter().find(|e| e.operation == op).cloned();
        Some((find("backup_drill_passed")?, find("backup_drill_failed")?))
    })
    .await;
    assert_eq!(
        (good.service.as_str(), good.principal.as_str()),
        ("backup-drill", "backup-drill")
    );
    assert!(good.success);
    assert_eq!(good.secret_name, "sentia-backup-good.sbk");
    assert!(!bad.success);
    assert_eq!(bad.status_code, "DATA_LOSS");
    alert(&sandbox, "BackupDrillFailed", "sentia-backup-bad.sbk").await;
    // Alerts are evaluated in log order: the passed drill's event came first.
    assert!(
        !alerts(&sandbox)
            .await
            .iter()
            .any(|a| a.summary.contains("sentia-backup-good.sbk")),
        "a passed drill raises nothing"
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_that_stops_reporting_raises_an_alert_and_only_the_drill_itself_counts() {
    let sandbox = Sandbox::builder()
        .audit()
        .audit_setting("SENTIA_DRILL_OVERDUE_AFTER", "2s")
        .start()
        .await
        .unwrap();
    // The log begins with vault-service's identity claiming a passed drill: no report.
    sandbox
        .audit()
        .client(keys::SERVICE_TOKEN)
        .append_events(apb::AppendEventsRequest {
            events: vec![apb::AuditEvent {
                time: Some(sentia_proto::wkt::timestamp(sentia_proto::wkt::now_ms())),
                event_type: "backup".into(),
                service: "backup-drill".into(),
                principal: "backup-drill".into(),
                operation: "backup_drill_passed".into(),
                emitter_id: unique("emitter"),
                emitter_sequence: 1,
                success: true,
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let never = alert(&sandbox, "BackupDrillOverdue", "none ever").await;
    assert!(
        never.summary.contains("SENTIA_DRILL_OVERDUE_AFTER"),
        "{}",
        never.summary
    );
    assert_eq!(never.principal, "backup-drill");
    sandbox
        .audit()
        .client(keys::ADMIN_TOKEN)
        .acknowledge_alert(apb::AcknowledgeAlertRequest { id: never.id })
        .await
        .unwrap();
    // The drill job reports; two seconds later it is owed again, counted from that report.
    sentia_backup_restore::record(
        channel(&sandbox.audit().addr, keys::DRILL_TOKEN),
        "sentia-backup-good.sbk",
        &Ok(passed()),
    )
    .await
    .unwrap();
    alert(&sandbox, "BackupDrillOverdue", "its last report").await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_scheduler_itself_can_raise_a_backup_alert() {
    let sandbox = Sandbox::builder().audit().start().await.unwrap();
    let append = |token: &'static str, destination: &'static str| {
        let audit = sandbox.audit().client(token);
        async move {
            let mut audit = audit;
            audit
                .append_events(apb::AppendEventsRequest {
                    events: vec![apb::AuditEvent {
                        time: Some(sentia_proto::wkt::timestamp(sentia_proto::wkt::now_ms())),
                        event_type: "backup".into(),
                        service: "rotation-scheduler".into(),
                        principal: "rotation-scheduler".into(),
                        operation: "backup_copy_failed".into(),
                        secret_name: destination.into(),
                        status_code: "UNAVAILABLE".into(),
                        emitter_id: unique("emitter"),
                        emitter_sequence: 1,
                        ..Default::default()
                    }],
                })
                .await
                .unwrap();
        }
    };
    // vault-service's identity claims to be the scheduler; then the scheduler reports.
    append(keys::SERVICE_TOKEN, "s3://spoofed/x").await;
    append(keys::SCHEDULER_KEY_TOKEN, "s3://genuine/x").await;
    alert(&sandbox, "BackupFailed", "s3://genuine/x").await;
    // Alerts are evaluated in log order: the claim came first and raised nothing.
    assert!(
        !alerts(&sandbox)
            .await
            .iter()
            .any(|a| a.summary.contains("s3://spoofed/x"))
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monthly_check_reads_every_stored_copy_back_and_raises_an_alert_for_an_altered_one() {
    let dir = sentia_testkit::scratch_path(&unique("sentia_checked"));
    let day = 86_400_000;
    let clock = rotation_scheduler::Clock::manual(sentia_proto::wkt::now_ms());
    let sandbox = Sandbox::builder()
        .scheduler(rotation_scheduler::Hooks {
            clock: clock.clone(),
            ..Default::default()
        })
        .scheduled_backups(dir.to_str().unwrap(), Vec::new())
        .start()
        .await
        .unwrap();
    // The first backup, then the first check of it.
    let first = backup_event(&sandbox, |events| {
        let made = events.iter().find(|e| e.operation == "backup_created")?;
        events
            .iter()
            .any(|e| e.operation == "backup_checked")
            .then(|| made.secret_name.clone())
    })
    .await;
    // A byte of the stored copy changes; a month later the next check reads it back.
    let stored = dir.join(&first);
    let mut bytes = std::fs::read(&stored).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();
    clock.advance(31 * day);
    let failed = backup_event(&sandbox, |events| {
        events
            .iter()
            .find(|e| e.operation == "backup_check_failed")
            .cloned()
    })
    .await;
    assert_eq!(failed.secret_name, format!("{}/{first}", dir.display()));
    assert!(!failed.success);
    alert(&sandbox, "BackupCheckFailed", &first).await;
    // The month's new backup was made first, and checked good.
    let events = sandbox.audit().events().await;
    let made: Vec<_> = events
        .iter()
        .filter(|e| e.operation == "backup_created")
        .collect();
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(
        !events.iter().any(|e| e.operation == "backup_check_failed"
            && e.secret_name.ends_with(&made[1].secret_name))
    );
    sandbox.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
