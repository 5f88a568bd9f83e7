//! A whole deployment backed up into one archive and restored into empty databases (ADR 8):
//! the archive opens with the master or the recovery key and nothing else, every byte of it is
//! checked against a manifest signed by key-service, a changed byte is refused naming where,
//! a restore refuses databases that hold data unless told to replace it, and services started
//! on the restored databases serve every version that was there.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use sentia_backup_ops::{BackupError, Destination, Opener, Sources, Trust};
use sentia_backup_restore::Targets;
use sentia_crypto::{MasterKey, RecoveryPrivateKey};
use sentia_proto::audit::v1::VerifyChainRequest;
use sentia_proto::keys::v1::{UnsealRequest, unseal_request};
use sentia_proto::vault::v1 as pb;
use sentia_runtime::client::{AuthedChannel, CallContext, connect_lazy};
use sentia_testkit::audit::AuditService;
use sentia_testkit::{Backend, Sandbox, Stack, database, get_version, keys};
use zeroize::Zeroizing;

fn channel(addr: &str, token: &str) -> AuthedChannel {
    CallContext::with_token(Some(token))
        .unwrap()
        .wrap(connect_lazy(addr, None).unwrap())
}

async fn trusted_keys(addr: &str) -> HashMap<String, Vec<u8>> {
    sentia_backup_ops::trusted_keys(channel(addr, keys::ADMIN_TOKEN))
        .await
        .unwrap()
}

/// The snapshot of a brand-new key-service's database under `master`: the same key names, other
/// key material.
async fn another_keyring(backend: Backend, master: &str) -> Zeroizing<Vec<u8>> {
    let url = database(backend).await.unwrap();
    keys::Running::start(&url, &[("SENTIA_MASTER_KEY", master)])
        .await
        .stop()
        .await;
    let pool = sentia_db::connect(&url, 1, key_service::store::MIGRATIONS)
        .await
        .unwrap();
    let mut out = Vec::new();
    sentia_db::snapshot::dump(&pool, sentia_db::is_sqlite(&url), |batch| {
        out.extend_from_slice(&batch);
        async { true }
    })
    .await
    .unwrap();
    pool.close().await;
    Zeroizing::new(out)
}

/// Every stage a long operation reported: (what, total, units advanced).
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<(String, Option<u64>, u64)>>);

impl sentia_backup_ops::Progress for Recorded {
    fn stage(&self, what: &str, total: Option<u64>) {
        self.0.lock().unwrap().push((what.to_string(), total, 0));
    }
    fn advance(&self, n: u64) {
        if let Some(last) = self.0.lock().unwrap().last_mut() {
            last.2 += n;
        }
    }
}

/// All four services on `backend`, key-service with `key_settings`.
async fn deployment(backend: Backend, key_settings: &[(&str, &str)]) -> Option<Sandbox> {
    let mut builder = Sandbox::builder()
        .backend(backend)
        .audit()
        .scheduler(Default::default());
    for (k, v) in key_settings {
        builder = builder.key_setting(k, v);
    }
    builder.start().await
}

/// The four services as a backup's sources, each with its administrator's credential.
fn sources(sandbox: &Sandbox) -> Sources {
    let root = &sandbox.vault().root_token;
    Sources {
        keys: channel(&sandbox.keys().addr, keys::ADMIN_TOKEN),
        audit: channel(&sandbox.audit().addr, keys::ADMIN_TOKEN),
        vault: channel(&sandbox.vault().addr, root),
        scheduler: channel(&sandbox.scheduler().addr, root).into(),
    }
}

fn refused(r: Result<impl Sized, BackupError>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

async fn a_deployment_is_backed_up_checked_and_restored(backend: Backend) {
    let master = MasterKey::generate();
    let master_b64 = master.to_base64().to_string();
    let recovery = RecoveryPrivateKey::generate();
    let recovery_public = recovery.public().to_base64();
    let Some(sandbox) = deployment(
        backend,
        &[
            ("SENTIA_MASTER_KEY", &master_b64),
            ("SENTIA_RECOVERY_PUBLIC_KEY", &recovery_public),
        ],
    )
    .await
    else {
        return;
    };
    let vault = sandbox.vault();
    for v in [b"first".as_slice(), b"second", b"third"] {
        vault.put("prod/app/db", v).await;
    }
    vault.put("prod/app/api", b"PLAINTEXT-CANARY-backup").await;
    let mut secrets = vault.secrets(&vault.root_token).await;
    secrets
        .destroy_secret_versions(pb::DestroySecretVersionsRequest {
            path: "prod/app/db".into(),
            versions: vec![1],
        })
        .await
        .unwrap();
    let root = vault.root_token.clone();
    let by_master = || Opener::Master(MasterKey::from_base64(&master_b64).unwrap());
    let sources = sources(&sandbox);
    let dir = std::env::temp_dir().join(sentia_testkit::unique("sentia_backups"));
    std::fs::create_dir_all(&dir).unwrap();
    let (path, manifest) = sentia_backup_ops::create(&sources, &dir).await.unwrap();
    assert!(
        path.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("sentia-backup-"),
        "{path:?}"
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "only the finished archive is left"
    );
    assert_eq!(manifest.master_version, 1);
    assert_eq!(
        manifest.recovery_fingerprint,
        recovery.public().fingerprint()
    );
    assert_eq!(manifest.secret_versions.len(), 4, "{manifest:?}");
    assert!(manifest.audit.head_sequence > 0 && manifest.audit.problem.is_none());
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        !bytes
            .windows(b"PLAINTEXT-CANARY".len())
            .any(|w| w == b"PLAINTEXT-CANARY")
            && !bytes.windows(b"prod/app".len()).any(|w| w == b"prod/app"),
        "the archive is encrypted: no value and no path in clear"
    );
    let trust = Trust::Keys(trusted_keys(&sandbox.keys().addr).await);
    let events = sandbox.audit().events().await;
    assert!(
        events
            .iter()
            .any(|e| e.service == "key-service" && e.operation == "backup_begin" && e.success),
        "beginning a backup is audited"
    );
    sandbox.stop().await;

    // It opens with the master and with the recovery key, with nothing else.
    let checked = sentia_backup_ops::verify(&path, &by_master(), &trust).unwrap();
    assert_eq!(checked.manifest, manifest);
    assert!(!checked.self_attested);
    sentia_backup_ops::verify(
        &path,
        &Opener::Recovery(RecoveryPrivateKey::from_base64(&recovery.to_base64()).unwrap()),
        &Trust::Embedded,
    )
    .unwrap();
    let wrong = refused(sentia_backup_ops::verify(
        &path,
        &Opener::Master(MasterKey::generate()),
        &trust,
    ));
    assert!(wrong.contains("master"), "{wrong}");
    // Keys of another deployment do not vouch for it.
    let other = Trust::Keys(HashMap::from([(
        "backup-manifest-v1".to_string(),
        vec![7u8; 32],
    )]));
    let why = refused(sentia_backup_ops::verify(&path, &by_master(), &other));
    assert!(why.contains("manifest's signature"), "{why}");
    // A changed byte anywhere after the header is refused, naming the chunk.
    let tampered = dir.join("tampered.sbk");
    let mut copy = bytes.clone();
    let at = copy.len() / 2;
    copy[at] ^= 0x20;
    std::fs::write(&tampered, &copy).unwrap();
    let why = refused(sentia_backup_ops::verify(&tampered, &by_master(), &trust));
    assert!(why.contains("chunk"), "{why}");
    std::fs::write(&tampered, &bytes[..bytes.len() - 7]).unwrap();
    let why = refused(sentia_backup_ops::verify(&tampered, &by_master(), &trust));
    assert!(why.starts_with("archive:"), "{why}");

    // The drill: restored into scratch databases and exercised through the four services.
    let scratch = dir.join("drill");
    let progress = Recorded::default();
    let report = sentia_backup_restore::drill_with(&checked, &by_master(), &scratch, &progress)
        .await
        .unwrap();
    let stages = progress.0.lock().unwrap().clone();
    assert!(
        stages.contains(&("reading every secret version".to_string(), Some(4), 4)),
        "{stages:?}"
    );
    assert!(
        stages.contains(&(
            "loading vault-service".to_string(),
            Some(manifest.services["vault-service"].rows.values().sum()),
            manifest.services["vault-service"].rows.values().sum()
        )),
        "{stages:?}"
    );
    assert_eq!(
        (
            report.versions_read,
            report.versions_deleted,
            report.versions_destroyed
        ),
        (3, 0, 1),
        "{report:?}"
    );
    assert!(report.audit_records_checked >= manifest.audit.records);
    assert!(!scratch.exists(), "the scratch system is torn down");
    // A keyring that does not open the data (another key-service's, same master) passes
    // every digest it is not covered by, and the drill fails loudly reading the secrets.
    let mut forged = sentia_backup_ops::verify(&path, &by_master(), &trust).unwrap();
    forged.snapshots.insert(
        "key-service".into(),
        another_keyring(backend, &master_b64).await,
    );
    let why = refused(sentia_backup_restore::drill(&forged, &by_master(), &scratch).await);
    assert!(why.contains("drill failed at read secrets"), "{why}");
    assert!(!scratch.exists(), "torn down after a failure too");

    // Restored into empty databases.
    let targets = Targets {
        keys: database(backend).await.unwrap(),
        vault: database(backend).await.unwrap(),
        audit: database(backend).await.unwrap(),
        scheduler: database(backend).await.unwrap(),
    };
    let restored = sentia_backup_restore::restore(&checked, &targets, false)
        .await
        .unwrap();
    assert_eq!(restored.versions_checked, 4);
    for (service, listed) in &manifest.services {
        assert_eq!(
            restored.rows[service],
            listed.rows.values().sum::<u64>(),
            "{service}"
        );
    }
    // Again: refused before anything is written, unless told to replace.
    let why = refused(sentia_backup_restore::restore(&checked, &targets, false).await);
    assert!(
        why.contains("not empty") && why.contains("nothing was written"),
        "{why}"
    );
    sentia_backup_restore::restore(&checked, &targets, true)
        .await
        .unwrap();

    // Services on the restored databases, with the backup's master, serve what was there.
    let keys =
        keys::Running::start(&targets.keys, &[("SENTIA_MASTER_KEY", master_b64.as_str())]).await;
    let restored = Stack::start_vault(keys, targets.vault.clone(), &[]).await;
    let mut c = restored.secrets(&root).await;
    for (version, value) in [(2, b"second".as_slice()), (3, b"third")] {
        let got = c
            .get_secret(get_version("prod/app/db", version))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.value, value);
    }
    assert_eq!(
        c.get_secret(get_version("prod/app/db", 1))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::FailedPrecondition,
        "a destroyed version stays destroyed"
    );
    let got = c
        .get_secret(get_version("prod/app/api", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value, b"PLAINTEXT-CANARY-backup");
    restored.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every server and the master are lost after a master rotation: the backup taken before it
/// opens with the recovery key alone, and the restored keyring unseals with it too.
async fn a_backup_from_before_rotate_master_restores_with_the_recovery_key(backend: Backend) {
    let recovery = RecoveryPrivateKey::generate();
    let recovery_public = recovery.public().to_base64();
    let Some(sandbox) =
        deployment(backend, &[("SENTIA_RECOVERY_PUBLIC_KEY", &recovery_public)]).await
    else {
        return;
    };
    let vault = sandbox.vault();
    vault.put("prod/payroll/db", b"before-the-incident").await;
    let root = vault.root_token.clone();
    let sources = sources(&sandbox);
    let dir = std::env::temp_dir().join(sentia_testkit::unique("sentia_backups"));
    std::fs::create_dir_all(&dir).unwrap();
    let (path, manifest) = sentia_backup_ops::create(&sources, &dir).await.unwrap();
    let rotated = sandbox.keys().rotate_master().await;
    assert_eq!((manifest.master_version, rotated.master_version), (1, 2));
    vault.put("prod/payroll/db", b"after-the-rotation").await;
    sandbox.stop().await;

    // The master in force now does not open the archive; the recovery key does, offline.
    let new_master = MasterKey::from_base64(&rotated.master_key).unwrap();
    let why = refused(sentia_backup_ops::verify(
        &path,
        &Opener::Master(new_master),
        &Trust::Embedded,
    ));
    assert!(why.contains("master"), "{why}");
    let recovery_b64 = recovery.to_base64().to_string();
    let checked =
        sentia_backup_ops::verify(&path, &Opener::Recovery(recovery), &Trust::Embedded).unwrap();
    assert!(checked.self_attested);
    let report = sentia_backup_restore::drill(
        &checked,
        &Opener::Recovery(RecoveryPrivateKey::from_base64(&recovery_b64).unwrap()),
        &dir.join("drill"),
    )
    .await
    .unwrap();
    assert_eq!(report.versions_read, 1, "{report:?}");
    let targets = Targets {
        keys: database(backend).await.unwrap(),
        vault: database(backend).await.unwrap(),
        audit: database(backend).await.unwrap(),
        scheduler: database(backend).await.unwrap(),
    };
    sentia_backup_restore::restore(&checked, &targets, false)
        .await
        .unwrap();

    let keys = keys::Running::start(&targets.keys, &[("SENTIA_SEAL_TYPE", "recovery")]).await;
    let unsealed = keys
        .system(None)
        .await
        .unseal(UnsealRequest {
            material: Some(unseal_request::Material::RecoveryKey(recovery_b64)),
            reset: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!unsealed.sealed);
    // The restored audit log verifies, its checkpoints against the restored keyring's keys.
    let audit = AuditService::start_on(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        &keys.addr,
        &targets.audit,
        &[],
    )
    .await;
    let verdict = audit
        .client(keys::ADMIN_TOKEN)
        .verify_chain(VerifyChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(verdict.valid, "{verdict:?}");
    // Every record of the backup, and the restored log's own record of this check after them.
    assert!(
        verdict.records_checked > manifest.audit.records,
        "{verdict:?} {:?}",
        manifest.audit
    );
    audit.stop().await;
    let restored = Stack::start_vault(keys, targets.vault.clone(), &[]).await;
    let got = restored
        .secrets(&root)
        .await
        .get_secret(get_version("prod/payroll/db", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.value, b"before-the-incident");
    restored.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A directory and an S3 bucket (the moto server the test command starts) keep archives:
/// uploaded whole, listed newest first, downloaded intact (the copy verifies), and pruned past
/// retention except the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_are_kept_in_a_directory_and_a_bucket_and_pruned_past_retention() {
    let Some((bucket, options)) = sentia_testkit::s3_destination() else {
        return;
    };
    let master_b64 = MasterKey::generate().to_base64().to_string();
    let sandbox = deployment(Backend::Sqlite, &[("SENTIA_MASTER_KEY", &master_b64)])
        .await
        .unwrap();
    let vault = sandbox.vault();
    vault.put("prod/app/db", b"kept-offsite").await;
    let sources = sources(&sandbox);
    let staging = std::env::temp_dir().join(sentia_testkit::unique("sentia_staging"));
    std::fs::create_dir_all(&staging).unwrap();
    let (path, manifest) = sentia_backup_ops::create(&sources, &staging).await.unwrap();
    sandbox.stop().await;
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    // An archive from 100 days earlier (a copy under an older name).
    let day = 86_400_000;
    let old_name = sentia_backup_ops::file_name(manifest.created_ms - 100 * day, "0ld0ld0ld0");
    let old = staging.join(&old_name);
    std::fs::copy(&path, &old).unwrap();

    let dir = std::env::temp_dir().join(sentia_testkit::unique("sentia_backups"));
    let destinations = [
        Destination::parse(dir.to_str().unwrap()).unwrap(),
        Destination::parse_with(&bucket, &options).unwrap(),
    ];
    for dest in &destinations {
        dest.upload(&old).await.unwrap();
        dest.upload(&path).await.unwrap();
        let listed = dest.list().await.unwrap();
        assert_eq!(
            listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            [name.as_str(), old_name.as_str()],
            "{}",
            dest.label()
        );
        assert_eq!(listed[0].bytes, std::fs::metadata(&path).unwrap().len());
        let copy = staging.join(format!("copy-{}", dest.label().len()));
        dest.download(&name, &copy).await.unwrap();
        let opener = Opener::Master(MasterKey::from_base64(&master_b64).unwrap());
        let checked = sentia_backup_ops::verify(&copy, &opener, &Trust::Embedded).unwrap();
        assert_eq!(checked.manifest, manifest, "{}", dest.label());
        let pruned = dest
            .prune(
                std::time::Duration::from_secs(90 * 86_400),
                manifest.created_ms + day,
            )
            .await
            .unwrap();
        assert_eq!(pruned, std::slice::from_ref(&old_name), "{}", dest.label());
        // Long after, everything is past retention: the newest stays.
        let pruned = dest
            .prune(
                std::time::Duration::from_secs(90 * 86_400),
                manifest.created_ms + 1000 * day,
            )
            .await
            .unwrap();
        assert!(pruned.is_empty(), "{}: {pruned:?}", dest.label());
        assert_eq!(dest.list().await.unwrap().len(), 1);
        dest.delete(&name).await.unwrap();
    }
    std::fs::remove_dir_all(&staging).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_backup_from_before_rotate_master_restores_with_the_recovery_key() {
    a_backup_from_before_rotate_master_restores_with_the_recovery_key(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backup_from_before_rotate_master_restores_with_the_recovery_key() {
    a_backup_from_before_rotate_master_restores_with_the_recovery_key(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_deployment_is_backed_up_checked_and_restored() {
    a_deployment_is_backed_up_checked_and_restored(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_deployment_is_backed_up_checked_and_restored() {
    a_deployment_is_backed_up_checked_and_restored(Backend::Postgres).await;
}
