//! `sentia kms-plugin` against a real key-service, called over its unix socket the way
//! kube-apiserver calls it, through the Kubernetes KMS v2 contract.
#![allow(clippy::unwrap_used)]

mod shell;
use sentia_testkit as support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sentia_proto::keys::v1 as kpb;
use sentia_proto::kms::v2 as pb;
use sentia_proto::kms::v2::key_management_service_client::KeyManagementServiceClient;
use support::keys::{ADMIN_TOKEN, KMS_TOKEN, Running};
use tokio::process::Command;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// A KMS v2 client over the unix socket at `path`, once the plugin serves there.
async fn connect(path: &std::path::Path) -> KeyManagementServiceClient<Channel> {
    for _ in 0..300 {
        let p = path.to_path_buf();
        // The URI is required by the API and unused: every connection goes to the socket.
        let connected = Endpoint::from_static("http://kms.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await;
        if let Ok(channel) = connected {
            return KeyManagementServiceClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the plugin never served on {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kms_plugin_round_trips_through_key_service_and_reports_a_new_key_id_after_rotation() {
    let keys = Running::start(&support::sqlite_url(), &[]).await;
    let mut admin = keys.client(Some(ADMIN_TOKEN)).await;
    admin
        .create_key(kpb::CreateKeyRequest {
            name: "kubernetes-kms".into(),
            purpose: kpb::KeyPurpose::Encryption as i32,
            auto_rotate_period: None,
        })
        .await
        .unwrap();
    let dir = support::scratch_path(&support::unique("kms"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("kms.sock");
    // A stale socket from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut plugin = shell::spawn(
        &[("SENTIA_KEY_ADDR", &keys.addr), ("SENTIA_TOKEN", KMS_TOKEN)],
        &["kms-plugin", "--socket", socket.to_str().unwrap()],
    );
    let mut kms = connect(&socket).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let status = kms.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (status.version.as_str(), status.healthz.as_str()),
        ("v2", "ok")
    );
    assert_eq!(status.key_id, "kubernetes-kms-v1");
    let seed = sentia_crypto::random_bytes(32);
    let sealed = kms
        .encrypt(pb::EncryptRequest {
            plaintext: seed.to_vec(),
            uid: "req-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sealed.key_id, "kubernetes-kms-v1");
    assert!(
        !sealed
            .ciphertext
            .windows(seed.len())
            .any(|w| w == &seed[..])
    );
    let decrypt = |ciphertext: Vec<u8>, key_id: &str| pb::DecryptRequest {
        ciphertext,
        uid: "req-2".into(),
        key_id: key_id.into(),
        annotations: Default::default(),
    };
    let opened = kms
        .decrypt(decrypt(sealed.ciphertext.clone(), &sealed.key_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, seed.to_vec());

    // Rotation at key-service: Status names the new key id, new encryptions use it, and what
    // the old version encrypted still decrypts.
    admin
        .rotate_key(kpb::RotateKeyRequest {
            name: "kubernetes-kms".into(),
            stage: false,
        })
        .await
        .unwrap();
    let status = kms.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.key_id, "kubernetes-kms-v2");
    let resealed = kms
        .encrypt(pb::EncryptRequest {
            plaintext: seed.to_vec(),
            uid: "req-3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resealed.key_id, "kubernetes-kms-v2");
    for (ciphertext, key_id) in [
        (sealed.ciphertext.clone(), sealed.key_id.clone()),
        (resealed.ciphertext, resealed.key_id),
    ] {
        let opened = kms.decrypt(decrypt(ciphertext, &key_id)).await.unwrap();
        assert_eq!(opened.into_inner().plaintext, seed.to_vec());
    }

    // A tampered ciphertext is refused, not decrypted.
    let mut tampered = sealed.ciphertext.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let e = kms
        .decrypt(decrypt(tampered, &sealed.key_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The plugin's identity gets nothing beyond its key and context: not the vault's data
    // keys, not another context.
    let mut as_plugin = keys.client(Some(KMS_TOKEN)).await;
    let e = as_plugin
        .encrypt(kpb::EncryptRequest {
            key_name: "vault".into(),
            plaintext: b"x".to_vec(),
            encryption_context: b"kubernetes-kms".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = as_plugin
        .encrypt(kpb::EncryptRequest {
            key_name: "kubernetes-kms".into(),
            plaintext: b"x".to_vec(),
            encryption_context: b"other".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // key-service gone: Status says so (not "ok") and keeps the last key id.
    keys.stop().await;
    let status = kms.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_ne!(status.healthz, "ok");
    assert!(status.healthz.starts_with("key-service:"), "{status:?}");
    assert_eq!(status.key_id, "kubernetes-kms-v2");

    let pid = plugin.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let exited = tokio::time::timeout(Duration::from_secs(30), plugin.wait()).await;
    assert!(exited.is_ok(), "the plugin exits on SIGTERM");
    assert!(!socket.exists(), "the socket is removed on exit");
}
