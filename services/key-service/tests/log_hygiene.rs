//! Captures every log line (TRACE, all targets) during a full round of key-service calls and
//! proves no plaintext, data key, master key, recovery key, unseal share or token appears in
//! it.
#![allow(clippy::unwrap_used)]

use sentia_testkit::keys as support;

use support::Capture;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sentia_crypto::{MasterKey, RecoveryPrivateKey};
use sentia_proto::keys::v1::*;

#[tokio::test]
async fn no_key_material_plaintext_or_token_reaches_the_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let master = MasterKey::generate().to_base64().to_string();
    let recovery = RecoveryPrivateKey::generate();
    let recovery_public = recovery.public().to_base64();
    let (service_token, admin_token) = (support::CRYPTO_TOKEN, support::ADMIN_TOKEN);
    let ks = support::Running::start(
        &support::sqlite_url(),
        &[
            ("SENTIA_MASTER_KEY", master.as_str()),
            ("SENTIA_RECOVERY_PUBLIC_KEY", recovery_public.as_str()),
        ],
    )
    .await;
    let mut c = ks.client(Some(service_token)).await;
    let mut sys = ks.system(Some(admin_token)).await;

    let plaintext = b"PLAINTEXT-CANARY-a8c1e5".to_vec();
    let enc = c
        .encrypt(EncryptRequest {
            key_name: "vault".into(),
            plaintext: plaintext.clone(),
            encryption_context: b"ctx".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    c.decrypt(DecryptRequest {
        ciphertext: enc.ciphertext.clone(),
        encryption_context: b"ctx".to_vec(),
    })
    .await
    .unwrap();
    let _ = c
        .decrypt(DecryptRequest {
            ciphertext: enc.ciphertext,
            encryption_context: b"wrong".to_vec(),
        })
        .await;
    let dk = c
        .generate_data_key(GenerateDataKeyRequest {
            key_name: "vault".into(),
            encryption_context: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    c.unwrap_data_key(UnwrapDataKeyRequest {
        wrapped_key: dk.wrapped_key,
        encryption_context: vec![],
    })
    .await
    .unwrap();
    c.sign(SignRequest {
        key_name: "sentia-jwt".into(),
        message: plaintext.clone(),
    })
    .await
    .unwrap();
    let rotated = ks.rotate_master().await;
    sys.seal(SealRequest {}).await.unwrap();
    sys.unseal(UnsealRequest {
        material: Some(unseal_request::Material::MasterKey(
            rotated.master_key.clone(),
        )),
        reset: false,
    })
    .await
    .unwrap();
    sys.seal(SealRequest {}).await.unwrap();
    sys.unseal(UnsealRequest {
        material: Some(unseal_request::Material::RecoveryKey(
            recovery.to_base64().to_string(),
        )),
        reset: false,
    })
    .await
    .unwrap();
    let _ = c
        .encrypt(EncryptRequest {
            key_name: "vault".into(),
            plaintext: vec![],
            encryption_context: vec![],
        })
        .await;

    ks.stop().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(
        logs.contains("key-service unsealed"),
        "the capture must have seen the service's logs"
    );
    let forbidden = [
        ("plaintext", String::from_utf8(plaintext).unwrap()),
        ("data key (base64)", STANDARD.encode(&dk.plaintext_key)),
        ("data key (hex)", hex_of(&dk.plaintext_key)),
        (
            "data key (debug bytes)",
            format!("{:?}", &dk.plaintext_key[..8])
                .trim_end_matches(']')
                .to_string(),
        ),
        ("master key", master.clone()),
        ("rotated master key", rotated.master_key),
        ("recovery private key", recovery.to_base64().to_string()),
        ("service token", service_token.to_string()),
        ("admin token", admin_token.to_string()),
    ];
    for (what, needle) in forbidden {
        assert!(!logs.contains(&needle), "{what} leaked into the logs");
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
