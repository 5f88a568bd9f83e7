//! Least privilege at key-service, over mutual TLS as deployed: each service's certificate
//! may do exactly its job under the shipped grants, a certificate the CA signed for an
//! unknown name gets nothing, and a grants file replaces the defaults.
#![allow(clippy::unwrap_used)]

use sentia_testkit::keys as support;

use sentia_dev_pki::DevPki;
use sentia_proto::keys::v1::{
    EncryptRequest, GenerateDataKeyRequest, GetPublicKeysRequest, RotateKeyRequest, SignRequest,
    UnwrapDataKeyRequest,
};
use support::Running;
use tonic::Code;

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, needles: &[&str]) {
    let err = r.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for n in needles {
        assert!(
            err.message().contains(n),
            "{n:?} not in {:?}",
            err.message()
        );
    }
}

fn sign(key: &str) -> SignRequest {
    SignRequest {
        key_name: key.into(),
        message: b"{\"pol\":[\"root\"]}".to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_certificate_may_do_exactly_its_job_and_a_stranger_nothing() {
    let pki = DevPki::generate().unwrap();
    let mut config = Running::config(&support::sqlite_url(), &[]);
    config.server.tls = Some(pki.server_config("key-service", true).unwrap());
    config.server.admin_identities = vec!["operator".into()];
    // The shipped grants, not the test harness's extra identity.
    config.grants = key_service::grants::Grants::default_set();
    let as_cert = |name: &str| pki.client_config(Some(name)).unwrap();
    let ks = Running::launch(config, Some(as_cert("operator"))).await;

    let mut vault = ks.client_tls(&as_cert("vault-service")).await;
    let ctx = b"vault|prod/app/db|1".to_vec();
    let dk = vault
        .generate_data_key(GenerateDataKeyRequest {
            key_name: "vault".into(),
            encryption_context: ctx.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let unwrap = |context: &[u8]| UnwrapDataKeyRequest {
        wrapped_key: dk.wrapped_key.clone(),
        encryption_context: context.to_vec(),
    };
    assert_eq!(
        vault
            .unwrap_data_key(unwrap(&ctx))
            .await
            .unwrap()
            .into_inner()
            .plaintext_key,
        dk.plaintext_key
    );
    vault.sign(sign("sentia-jwt")).await.unwrap();
    // Only contexts of its own shape, only its own keys, no transit crypto.
    denied(
        vault
            .generate_data_key(GenerateDataKeyRequest {
                key_name: "vault".into(),
                encryption_context: b"billing|ledger".to_vec(),
            })
            .await,
        &["'vault-service'", "generate_data_key", "billing|ledger"],
    );
    denied(
        vault.sign(sign("audit-checkpoint")).await,
        &["'vault-service'", "sign", "audit-checkpoint"],
    );
    denied(
        vault
            .encrypt(EncryptRequest {
                key_name: "vault".into(),
                plaintext: b"x".to_vec(),
                encryption_context: ctx.clone(),
            })
            .await,
        &["encrypt"],
    );

    // audit-service's credential cannot mint tokens or open vault-service's data keys.
    let mut audit = ks.client_tls(&as_cert("audit-service")).await;
    audit.sign(sign("audit-checkpoint")).await.unwrap();
    denied(
        audit.sign(sign("sentia-jwt")).await,
        &["'audit-service'", "sign", "sentia-jwt"],
    );
    denied(
        audit.unwrap_data_key(unwrap(&ctx)).await,
        &["unwrap_data_key", "\"vault\""],
    );

    // rotation-scheduler rolls the token key and does nothing else with it.
    let mut scheduler = ks.client_tls(&as_cert("rotation-scheduler")).await;
    let staged = scheduler
        .rotate_key(RotateKeyRequest {
            name: "sentia-jwt".into(),
            stage: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(staged.staged_version, 2);
    denied(
        scheduler.sign(sign("sentia-jwt")).await,
        &["'rotation-scheduler'"],
    );
    denied(
        scheduler
            .rotate_key(RotateKeyRequest {
                name: "vault".into(),
                stage: false,
            })
            .await,
        &["rotate_key", "\"vault\""],
    );

    // A certificate from the same CA under a name nobody configured gets nothing at all,
    // not even public keys.
    let mut stranger = ks.client_tls(&as_cert("intruder")).await;
    denied(
        stranger.sign(sign("sentia-jwt")).await,
        &["\"intruder\"", "SENTIA_SERVICE_IDENTITIES"],
    );
    denied(
        stranger
            .get_public_keys(GetPublicKeysRequest {
                key_name: "sentia-jwt".into(),
            })
            .await,
        &["intruder"],
    );
    // Every identity that may call at all may read public keys.
    audit
        .get_public_keys(GetPublicKeysRequest {
            key_name: "sentia-jwt".into(),
        })
        .await
        .unwrap();
    // The operator is an admin: everything.
    ks.client_tls(&as_cert("operator"))
        .await
        .encrypt(EncryptRequest {
            key_name: "vault".into(),
            plaintext: b"x".to_vec(),
            encryption_context: b"anything".to_vec(),
        })
        .await
        .unwrap();
    ks.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grants_file_replaces_the_shipped_grants_and_a_broken_one_stops_the_start() {
    let dir = std::env::temp_dir().join(support::unique("sentia_grants"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("grants.toml");
    std::fs::write(
        &file,
        "[crypto-tester]\ngrants = [{ keys = [\"vault\"], operations = [\"encrypt\"], contexts = [\"app|*\"] }]\n",
    )
    .unwrap();
    let file_s = file.display().to_string();
    let ks = Running::start(
        &support::sqlite_url(),
        &[("SENTIA_KEY_GRANTS_FILE", file_s.as_str())],
    )
    .await;
    let mut c = ks.client(Some(support::CRYPTO_TOKEN)).await;
    let encrypt = |ctx: &[u8]| EncryptRequest {
        key_name: "vault".into(),
        plaintext: b"x".to_vec(),
        encryption_context: ctx.to_vec(),
    };
    c.encrypt(encrypt(b"app|one")).await.unwrap();
    denied(c.encrypt(encrypt(b"other|one")).await, &["other|one"]);
    // vault-service held grants only through the shipped file, which this one replaced.
    denied(
        ks.client(Some(support::SERVICE_TOKEN))
            .await
            .sign(sign("sentia-jwt"))
            .await,
        &["'vault-service'"],
    );
    ks.stop().await;

    std::fs::write(
        &file,
        "[svc]\ngrants = [{ keys = [\"k\"], operations = [\"fly\"] }]\n",
    )
    .unwrap();
    let err = key_service::Config::from_source(&sentia_runtime::MapSource::from_pairs([
        ("SENTIA_ALLOW_PLAINTEXT", "true"),
        ("SENTIA_SEAL_TYPE", "shamir"),
        ("SENTIA_AUDIT_DISABLED", "true"),
        ("SENTIA_KEY_GRANTS_FILE", file_s.as_str()),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("SENTIA_KEY_GRANTS_FILE") && err.contains("\"fly\""),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
