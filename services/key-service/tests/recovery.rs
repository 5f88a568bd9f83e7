//! The strategy document's DR scenario 1, lost master key: the master is kept escrowed to an
//! offline recovery key; key-service started for recovery opens the escrow with the recovery
//! private key, everything encrypted before still decrypts, and a master rotation gives a new
//! master (escrowed again) while the old one stops opening the keyring.
#![allow(clippy::unwrap_used)]

use sentia_testkit::keys as support;

use key_service::{Config, KeyError};
use sentia_crypto::{MasterKey, RecoveryPrivateKey};
use sentia_proto::keys::v1::*;
use sentia_runtime::{MapSource, Shutdown};
use support::{CRYPTO_TOKEN, Running};
use tonic::Code;

async fn encrypt(ks: &Running, plaintext: &[u8]) -> Vec<u8> {
    ks.client(Some(CRYPTO_TOKEN))
        .await
        .encrypt(EncryptRequest {
            key_name: "vault".into(),
            plaintext: plaintext.to_vec(),
            encryption_context: b"payroll".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext
}

async fn decrypt(ks: &Running, ciphertext: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    Ok(ks
        .client(Some(CRYPTO_TOKEN))
        .await
        .decrypt(DecryptRequest {
            ciphertext: ciphertext.to_vec(),
            encryption_context: b"payroll".to_vec(),
        })
        .await?
        .into_inner()
        .plaintext)
}

async fn status(ks: &Running) -> StatusResponse {
    ks.system(None)
        .await
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn unseal_with(ks: &Running, key: &str) -> Result<UnsealResponse, tonic::Status> {
    ks.system(None)
        .await
        .unseal(UnsealRequest {
            material: Some(unseal_request::Material::RecoveryKey(key.into())),
            reset: false,
        })
        .await
        .map(|r| r.into_inner())
}

async fn a_lost_master_key_is_recovered_with_the_recovery_key_and_then_replaced(url: String) {
    let recovery = RecoveryPrivateKey::generate();
    let recovery_public = recovery.public().to_base64();
    let first_master = MasterKey::generate().to_base64().to_string();

    let ks = Running::start(
        &url,
        &[
            ("SENTIA_MASTER_KEY", first_master.as_str()),
            ("SENTIA_RECOVERY_PUBLIC_KEY", recovery_public.as_str()),
        ],
    )
    .await;
    assert_eq!(
        status(&ks).await.recovery_fingerprint,
        recovery.public().fingerprint(),
        "the master is escrowed to the configured recovery key"
    );
    let ciphertext = encrypt(&ks, b"db-password-before-the-incident").await;
    ks.stop().await;

    // The master key is lost: start for recovery, without it.
    let ks = Running::start(&url, &[("SENTIA_SEAL_TYPE", "recovery")]).await;
    let st = status(&ks).await;
    assert!(st.sealed);
    assert_eq!(st.seal_type, "recovery");
    assert_eq!(st.recovery_fingerprint, recovery.public().fingerprint());
    assert!(decrypt(&ks, &ciphertext).await.is_err(), "sealed");

    let stranger = RecoveryPrivateKey::generate();
    let refused = unseal_with(&ks, &stranger.to_base64()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains(&recovery.public().fingerprint()),
        "the refusal names the recovery key the escrow needs: {refused:?}"
    );
    let malformed = unseal_with(&ks, "not a key").await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
    assert!(status(&ks).await.sealed, "refusals leave it sealed");

    assert!(
        !unseal_with(&ks, &recovery.to_base64())
            .await
            .unwrap()
            .sealed
    );
    assert_eq!(
        decrypt(&ks, &ciphertext).await.unwrap(),
        b"db-password-before-the-incident"
    );

    // A new master for future use; the old one no longer opens the keyring.
    let rotated = ks.rotate_master().await;
    assert_eq!(rotated.master_version, 2);
    assert_eq!(
        status(&ks).await.recovery_fingerprint,
        recovery.public().fingerprint(),
        "the new master is escrowed to the same recovery key"
    );
    ks.stop().await;

    let refused = key_service::run(
        Config::from_source(&MapSource::from_pairs([
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_DATABASE_URL", url.as_str()),
            ("SENTIA_MASTER_KEY", first_master.as_str()),
            ("SENTIA_AUDIT_DISABLED", "true"),
        ]))
        .unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Shutdown::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, KeyError::PermissionDenied(_)),
        "the lost master no longer opens the keyring: {refused:?}"
    );

    let ks = Running::start(&url, &[("SENTIA_MASTER_KEY", rotated.master_key.as_str())]).await;
    assert_eq!(
        decrypt(&ks, &ciphertext).await.unwrap(),
        b"db-password-before-the-incident"
    );
    ks.stop().await;

    // The escrow follows the rotation: the recovery key opens master version 2 too.
    let ks = Running::start(&url, &[("SENTIA_SEAL_TYPE", "recovery")]).await;
    assert!(
        !unseal_with(&ks, &recovery.to_base64())
            .await
            .unwrap()
            .sealed
    );
    assert_eq!(status(&ks).await.master_version, 2);
    assert_eq!(
        decrypt(&ks, &ciphertext).await.unwrap(),
        b"db-password-before-the-incident"
    );
    ks.stop().await;
}

async fn without_an_escrow_recovery_says_what_was_missing(url: String) {
    let ks = Running::start(&url, &[]).await;
    ks.stop().await;
    let ks = Running::start(&url, &[("SENTIA_SEAL_TYPE", "recovery")]).await;
    assert_eq!(status(&ks).await.recovery_fingerprint, "");
    let refused = unseal_with(&ks, &RecoveryPrivateKey::generate().to_base64())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("SENTIA_RECOVERY_PUBLIC_KEY"),
        "{refused:?}"
    );
    ks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_master_key_is_recovered_with_the_recovery_key_and_then_replaced_on_sqlite() {
    a_lost_master_key_is_recovered_with_the_recovery_key_and_then_replaced(support::sqlite_url())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_master_key_is_recovered_with_the_recovery_key_and_then_replaced_on_postgres() {
    if let Some(url) = support::postgres_url().await {
        a_lost_master_key_is_recovered_with_the_recovery_key_and_then_replaced(url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_escrow_recovery_says_what_was_missing_on_sqlite() {
    without_an_escrow_recovery_says_what_was_missing(support::sqlite_url()).await;
}
