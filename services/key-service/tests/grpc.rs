//! key-service over real gRPC on an ephemeral port, on SQLite and on Postgres (each test in
//! its own fresh database): happy paths and every bad input with its exact status code.
#![allow(clippy::unwrap_used)]

use sentia_testkit::keys as support;

use sentia_crypto::MasterKey;
use sentia_proto::keys::v1::*;
use support::{ADMIN_TOKEN, CRYPTO_TOKEN, Running, postgres_url};
use tonic::Code;

async fn start(url: &str, extra: &[(&str, &str)]) -> Running {
    Running::start(url, extra).await
}

fn sqlite_url() -> Option<String> {
    Some(support::sqlite_url())
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

async fn encryption_round_trips_and_bad_inputs_get_precise_statuses(url: String) {
    let ks = start(&url, &[]).await;
    let mut c = ks.client(Some(CRYPTO_TOKEN)).await;
    let ctx = b"vault|prod/db/password|1".to_vec();
    let enc = c
        .encrypt(EncryptRequest {
            key_name: "vault".into(),
            plaintext: b"hunter2".to_vec(),
            encryption_context: ctx.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let dec = c
        .decrypt(DecryptRequest {
            ciphertext: enc.ciphertext.clone(),
            encryption_context: ctx.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dec.plaintext, b"hunter2");
    assert_eq!((dec.key_name.as_str(), dec.key_version), ("vault", 1));

    // Wrong context, tampered and truncated ciphertexts.
    let wrong = c
        .decrypt(DecryptRequest {
            ciphertext: enc.ciphertext.clone(),
            encryption_context: b"vault|other|1".to_vec(),
        })
        .await;
    let status = wrong.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("authentication failed"),
        "{}",
        status.message()
    );
    let mut tampered = enc.ciphertext.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        code(
            c.decrypt(DecryptRequest {
                ciphertext: tampered,
                encryption_context: ctx.clone()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.decrypt(DecryptRequest {
                ciphertext: enc.ciphertext[..10].to_vec(),
                encryption_context: ctx.clone()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.decrypt(DecryptRequest {
                ciphertext: vec![],
                encryption_context: ctx.clone()
            })
            .await
        ),
        Code::InvalidArgument
    );

    // Empty and oversized payloads, unknown key, bad key name, oversized context, wrong purpose.
    let enc_req = |name: &str, plaintext: Vec<u8>, ctx: Vec<u8>| EncryptRequest {
        key_name: name.into(),
        plaintext,
        encryption_context: ctx,
    };
    assert_eq!(
        code(c.encrypt(enc_req("vault", vec![], vec![])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.encrypt(enc_req("vault", vec![0; 65_537], vec![])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.encrypt(enc_req("vault", vec![1], vec![0; 1025])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.encrypt(enc_req("no-such-key", vec![1], vec![])).await),
        Code::NotFound
    );
    assert_eq!(
        code(c.encrypt(enc_req("Bad Name", vec![1], vec![])).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.encrypt(enc_req("sentia-jwt", vec![1], vec![])).await),
        Code::FailedPrecondition
    );
    ks.stop().await;
}

async fn data_keys_unwrap_and_rewrap_forward_after_rotation(url: String) {
    let ks = start(&url, &[]).await;
    let mut c = ks.client(Some(CRYPTO_TOKEN)).await;
    let mut admin = ks.client(Some(ADMIN_TOKEN)).await;
    let ctx = b"vault|a/b|1".to_vec();
    let dk = c
        .generate_data_key(GenerateDataKeyRequest {
            key_name: "vault".into(),
            encryption_context: ctx.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dk.plaintext_key.len(), 32);
    let rotated = admin
        .rotate_key(RotateKeyRequest {
            name: "vault".into(),
            stage: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.primary_version, 2);
    let re = c
        .rewrap_data_key(RewrapDataKeyRequest {
            wrapped_key: dk.wrapped_key.clone(),
            encryption_context: ctx.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(re.key_version, 2);
    let un = c
        .unwrap_data_key(UnwrapDataKeyRequest {
            wrapped_key: re.wrapped_key,
            encryption_context: ctx.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(un.plaintext_key, dk.plaintext_key);

    // Raising min_decryption_version retires version 1.
    admin
        .set_key_policy(SetKeyPolicyRequest {
            name: "vault".into(),
            min_decryption_version: 2,
            auto_rotate_period: None,
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["min_decryption_version".into()],
            }),
        })
        .await
        .unwrap();
    let old = c
        .unwrap_data_key(UnwrapDataKeyRequest {
            wrapped_key: dk.wrapped_key,
            encryption_context: ctx,
        })
        .await;
    assert_eq!(code(old), Code::FailedPrecondition);
    let too_high = admin
        .set_key_policy(SetKeyPolicyRequest {
            name: "vault".into(),
            min_decryption_version: 9,
            auto_rotate_period: None,
            update_mask: None,
        })
        .await;
    assert_eq!(code(too_high), Code::InvalidArgument);
    ks.stop().await;
}

async fn signatures_verify_against_the_published_jwks_and_hmacs_check(url: String) {
    let ks = start(&url, &[]).await;
    let mut c = ks.client(Some(CRYPTO_TOKEN)).await;
    let sig = c
        .sign(SignRequest {
            key_name: "sentia-jwt".into(),
            message: b"header.payload".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (sig.kid.as_str(), sig.algorithm.as_str()),
        ("sentia-jwt-v1", "EdDSA")
    );
    let keys = c
        .get_public_keys(GetPublicKeysRequest {
            key_name: "sentia-jwt".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let pk = keys.keys.iter().find(|k| k.kid == sig.kid).unwrap();
    assert!(sentia_crypto::verify_ed25519(
        &pk.public_key,
        b"header.payload",
        &sig.signature
    ));
    assert!(!sentia_crypto::verify_ed25519(
        &pk.public_key,
        b"header.payload2",
        &sig.signature
    ));
    assert!(keys.jwks_json.contains("\"kty\":\"OKP\"") && keys.jwks_json.contains("sentia-jwt-v1"));

    let mut admin = ks.client(Some(ADMIN_TOKEN)).await;
    admin
        .create_key(CreateKeyRequest {
            name: "webhooks".into(),
            purpose: KeyPurpose::Hmac as i32,
            auto_rotate_period: None,
        })
        .await
        .unwrap();
    let dup = admin
        .create_key(CreateKeyRequest {
            name: "webhooks".into(),
            purpose: KeyPurpose::Hmac as i32,
            auto_rotate_period: None,
        })
        .await;
    assert_eq!(code(dup), Code::AlreadyExists);
    let mac = c
        .hmac(HmacRequest {
            key_name: "webhooks".into(),
            data: b"body".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .mac;
    let ok = c
        .verify_hmac(VerifyHmacRequest {
            key_name: "webhooks".into(),
            data: b"body".to_vec(),
            mac: mac.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.valid);
    let bad = c
        .verify_hmac(VerifyHmacRequest {
            key_name: "webhooks".into(),
            data: b"other".to_vec(),
            mac,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!bad.valid);
    let (mut names, mut token) = (Vec::new(), String::new());
    loop {
        let page = c
            .list_keys(ListKeysRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 2, "a page holds at most page_size keys");
        names.extend(page.keys.into_iter().map(|k| k.name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        names,
        [
            "audit-checkpoint",
            "backup-manifest",
            "sentia-jwt",
            "vault",
            "webhooks"
        ]
    );
    ks.stop().await;
}

async fn callers_are_authenticated_and_admin_rpcs_need_the_admin_role(url: String) {
    let ks = start(&url, &[]).await;
    assert_eq!(code(ks.encrypt_one_byte(None).await), Code::Unauthenticated);
    assert_eq!(
        code(ks.encrypt_one_byte(Some("forged")).await),
        Code::Unauthenticated
    );
    let create = CreateKeyRequest {
        name: "x".into(),
        purpose: KeyPurpose::Encryption as i32,
        auto_rotate_period: None,
    };
    assert_eq!(
        code(ks.client(Some(CRYPTO_TOKEN)).await.create_key(create).await),
        Code::PermissionDenied
    );
    // Status needs no credentials.
    let status = ks
        .system(None)
        .await
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.sealed && status.initialized);
    ks.stop().await;
}

async fn a_sealed_service_answers_unavailable_and_unseals_with_the_master_key(url: String) {
    let master = MasterKey::generate().to_base64().to_string();
    // Later pairs win, so this server runs with a master key the test knows.
    let ks = start(&url, &[("SENTIA_MASTER_KEY", master.as_str())]).await;

    let mut sys = ks.system(Some(ADMIN_TOKEN)).await;
    sys.seal(SealRequest {}).await.unwrap();
    let sealed = ks.encrypt_one_byte(Some(CRYPTO_TOKEN)).await.unwrap_err();
    assert_eq!(sealed.code(), Code::Unavailable);
    assert!(sealed.message().contains("sealed"));
    let wrong = MasterKey::generate().to_base64().to_string();
    let refused = sys
        .unseal(UnsealRequest {
            material: Some(unseal_request::Material::MasterKey(wrong)),
            reset: false,
        })
        .await;
    assert_eq!(code(refused), Code::PermissionDenied);
    let ok = sys
        .unseal(UnsealRequest {
            material: Some(unseal_request::Material::MasterKey(master)),
            reset: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ok.sealed);
    ks.encrypt_one_byte(Some(CRYPTO_TOKEN)).await.unwrap();
    ks.stop().await;
}

async fn rotating_the_master_key_keeps_data_and_locks_out_the_old_master(url: String) {
    let ks = start(&url, &[]).await;
    let mut c = ks.client(Some(CRYPTO_TOKEN)).await;
    let enc = c
        .encrypt(EncryptRequest {
            key_name: "vault".into(),
            plaintext: b"v".to_vec(),
            encryption_context: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut sys = ks.system(Some(ADMIN_TOKEN)).await;
    let rotated = ks.rotate_master().await;
    assert_eq!(rotated.master_version, 2);
    sys.seal(SealRequest {}).await.unwrap();
    let old_master_fails = sys
        .unseal(UnsealRequest {
            material: Some(unseal_request::Material::MasterKey(
                MasterKey::generate().to_base64().to_string(),
            )),
            reset: false,
        })
        .await;
    assert_eq!(code(old_master_fails), Code::PermissionDenied);
    sys.unseal(UnsealRequest {
        material: Some(unseal_request::Material::MasterKey(rotated.master_key)),
        reset: false,
    })
    .await
    .unwrap();
    let dec = c
        .decrypt(DecryptRequest {
            ciphertext: enc.ciphertext,
            encryption_context: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dec.plaintext, b"v");
    ks.stop().await;
}

async fn a_shamir_keyring_unseals_only_with_enough_shares(url: String) {
    let ks = start(&url, &[("SENTIA_SEAL_TYPE", "shamir")]).await;
    let mut sys = ks.system(Some(ADMIN_TOKEN)).await;
    assert!(
        sys.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .sealed
    );
    assert_eq!(
        code(
            sys.init(InitRequest {
                secret_shares: 3,
                secret_threshold: 1
            })
            .await
        ),
        Code::InvalidArgument
    );
    let shares = sys
        .init(InitRequest {
            secret_shares: 5,
            secret_threshold: 3,
        })
        .await
        .unwrap()
        .into_inner()
        .shares;
    assert_eq!(shares.len(), 5);
    assert_eq!(
        code(
            sys.init(InitRequest {
                secret_shares: 5,
                secret_threshold: 3
            })
            .await
        ),
        Code::FailedPrecondition
    );
    sys.seal(SealRequest {}).await.unwrap();
    let share = |i: usize| UnsealRequest {
        material: Some(unseal_request::Material::Share(shares[i].clone())),
        reset: false,
    };
    assert_eq!(sys.unseal(share(4)).await.unwrap().into_inner().progress, 1);
    assert_eq!(
        code(sys.unseal(share(4)).await),
        Code::InvalidArgument,
        "a repeated share is refused"
    );
    assert!(sys.unseal(share(1)).await.unwrap().into_inner().sealed);
    assert!(!sys.unseal(share(2)).await.unwrap().into_inner().sealed);
    ks.encrypt_one_byte(Some(CRYPTO_TOKEN)).await.unwrap();
    ks.stop().await;
}

async fn the_encryption_budget_rotates_the_key_before_it_runs_out(url: String) {
    let ks = start(&url, &[("SENTIA_MAX_ENCRYPTIONS_PER_VERSION", "32")]).await;
    let mut c = ks.client(Some(CRYPTO_TOKEN)).await;
    let mut versions = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = c
            .encrypt(EncryptRequest {
                key_name: "vault".into(),
                plaintext: vec![1],
                encryption_context: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        versions.insert(r.key_version);
    }
    assert!(
        versions.len() >= 2,
        "40 encryptions under a budget of 32 must have rotated: {versions:?}"
    );
    let key = c
        .get_key(GetKeyRequest {
            name: "vault".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        key.versions.iter().all(|v| v.encryption_count <= 32),
        "{:?}",
        key.versions
    );
    ks.stop().await;
}

async fn a_staged_signing_key_is_published_before_it_signs_and_promoted_later(url: String) {
    let ks = start(&url, &[]).await;
    let mut c = ks.client(Some(CRYPTO_TOKEN)).await;
    let mut admin = ks.client(Some(ADMIN_TOKEN)).await;
    let rotate = |stage: bool| RotateKeyRequest {
        name: "sentia-jwt".into(),
        stage,
    };
    let kids = |r: GetPublicKeysResponse| r.keys.into_iter().map(|k| k.kid).collect::<Vec<_>>();
    let public = || GetPublicKeysRequest {
        key_name: "sentia-jwt".into(),
    };

    let staged = admin.rotate_key(rotate(true)).await.unwrap().into_inner();
    assert_eq!((staged.primary_version, staged.staged_version), (1, 2));
    let again = admin.rotate_key(rotate(true)).await.unwrap().into_inner();
    assert_eq!(again.staged_version, 2, "staging again is idempotent");
    assert_eq!(again.versions.len(), 2);
    assert_eq!(
        kids(c.get_public_keys(public()).await.unwrap().into_inner()),
        ["sentia-jwt-v1", "sentia-jwt-v2"],
        "verifiers learn v2 first"
    );
    assert_eq!(
        ks.signing_kid("sentia-jwt").await,
        "sentia-jwt-v1",
        "v1 still signs"
    );

    let promoted = admin.rotate_key(rotate(false)).await.unwrap().into_inner();
    assert_eq!((promoted.primary_version, promoted.staged_version), (2, 0));
    assert_eq!(
        promoted.versions.len(),
        2,
        "the staged version, not a new one"
    );
    assert_eq!(ks.signing_kid("sentia-jwt").await, "sentia-jwt-v2");
    admin
        .set_key_policy(SetKeyPolicyRequest {
            name: "sentia-jwt".into(),
            min_decryption_version: 2,
            auto_rotate_period: None,
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["min_decryption_version".into()],
            }),
        })
        .await
        .unwrap();
    assert_eq!(
        kids(c.get_public_keys(public()).await.unwrap().into_inner()),
        ["sentia-jwt-v2"],
        "v1 no longer verifies"
    );
    let plain = admin.rotate_key(rotate(false)).await.unwrap().into_inner();
    assert_eq!((plain.primary_version, plain.staged_version), (3, 0));
    ks.stop().await;
}

async fn a_backup_key_opens_with_the_master_and_with_the_recovery_key_only(url: String) {
    let master = MasterKey::generate();
    let master_b64 = master.to_base64().to_string();
    let recovery = sentia_crypto::RecoveryPrivateKey::generate();
    let recovery_public = recovery.public().to_base64();
    let ks = start(
        &url,
        &[
            ("SENTIA_MASTER_KEY", master_b64.as_str()),
            ("SENTIA_RECOVERY_PUBLIC_KEY", recovery_public.as_str()),
        ],
    )
    .await;
    assert_eq!(
        code(
            ks.system(Some(CRYPTO_TOKEN))
                .await
                .begin_backup(BeginBackupRequest {})
                .await
        ),
        Code::PermissionDenied,
        "only an administrator starts a backup"
    );
    let mut sys = ks.system(Some(ADMIN_TOKEN)).await;
    let begun = sys
        .begin_backup(BeginBackupRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(begun.master_version, 1);
    assert_eq!(begun.recovery_fingerprint, recovery.public().fingerprint());
    let header = sentia_backup::Header::from_bytes(&begun.header).unwrap();
    let by_master = sentia_backup::ArchiveKey::with_master(&header, &master).unwrap();
    let by_recovery = sentia_backup::ArchiveKey::with_recovery(&header, &recovery).unwrap();
    assert_eq!(by_master.expose().as_slice(), begun.archive_key.as_slice());
    assert_eq!(
        by_recovery.expose().as_slice(),
        begun.archive_key.as_slice()
    );
    assert!(
        sentia_backup::ArchiveKey::with_master(&header, &MasterKey::generate()).is_err(),
        "another master does not open it"
    );
    let again = sys
        .begin_backup(BeginBackupRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        again.archive_key, begun.archive_key,
        "a fresh key per archive"
    );

    // After a master rotation the header names the new master version, which the new master opens.
    let rotated = ks.rotate_master().await;
    let later = sys
        .begin_backup(BeginBackupRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.master_version, rotated.master_version);
    let new_master = MasterKey::from_base64(&rotated.master_key).unwrap();
    let header = sentia_backup::Header::from_bytes(&later.header).unwrap();
    assert_eq!(
        sentia_backup::ArchiveKey::with_master(&header, &new_master)
            .unwrap()
            .expose()
            .as_slice(),
        later.archive_key.as_slice()
    );
    assert!(sentia_backup::ArchiveKey::with_master(&header, &master).is_err());
    ks.stop().await;
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::sqlite_url().unwrap()).await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() {
                if let Some(url) = super::postgres_url().await { super::$name(url).await; }
            })*
        }
    };
}

on_both_databases!(
    encryption_round_trips_and_bad_inputs_get_precise_statuses,
    data_keys_unwrap_and_rewrap_forward_after_rotation,
    signatures_verify_against_the_published_jwks_and_hmacs_check,
    callers_are_authenticated_and_admin_rpcs_need_the_admin_role,
    a_sealed_service_answers_unavailable_and_unseals_with_the_master_key,
    rotating_the_master_key_keeps_data_and_locks_out_the_old_master,
    a_shamir_keyring_unseals_only_with_enough_shares,
    the_encryption_budget_rotates_the_key_before_it_runs_out,
    a_staged_signing_key_is_published_before_it_signs_and_promoted_later,
    a_backup_key_opens_with_the_master_and_with_the_recovery_key_only,
);
