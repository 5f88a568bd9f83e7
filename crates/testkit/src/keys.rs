//! key-service in this process, the identities the other services use at it (one static
//! token each, with the shipped grants), and helpers that need a running key-service.

use key_service::Config;
use sentia_crypto::MasterKey;
use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_proto::keys::v1::system_service_client::SystemServiceClient;
use sentia_runtime::client::{AuthedChannel, CallContext, connect};
use sentia_runtime::tls::TlsClientConfig;
use sentia_runtime::{MapSource, Role, Shutdown};

pub use crate::{Capture, postgres_database, postgres_url, sqlite_url, unique};

/// vault-service's identity at key-service (the shipped grants: data keys under `vault|…`,
/// signing tokens).
pub const SERVICE_TOKEN: &str = "service-token-for-tests";
/// audit-service's identity (signs checkpoints).
pub const AUDIT_TOKEN: &str = "audit-service-token-for-tests";
/// rotation-scheduler's identity (rolls the token signing key).
pub const SCHEDULER_KEY_TOKEN: &str = "scheduler-key-token-for-tests";
/// key-service's own identity (at audit-service, where it records its events).
pub const KEY_TOKEN: &str = "key-service-token-for-tests";
/// A service identity granted every operation on every key: for tests of the crypto itself.
pub const CRYPTO_TOKEN: &str = "crypto-token-for-tests";
/// An operator (admin role).
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// The Kubernetes KMS plugin's identity (`kms-plugin`): encrypts and decrypts under
/// `kubernetes-kms` only.
pub const KMS_TOKEN: &str = "kms-plugin-token-for-tests";
/// The restore drill job's identity (`backup-drill`): records drill outcomes at audit-service,
/// holds no key grant.
pub const DRILL_TOKEN: &str = "backup-drill-token-for-tests";

/// The shipped grants plus `crypto-tester`, which may do anything with any key.
pub fn test_grants() -> key_service::grants::Grants {
    let all = "[crypto-tester]\ngrants = [{ keys = [\"*\"], operations = [\"generate_data_key\", \
               \"unwrap_data_key\", \"rewrap_data_key\", \"encrypt\", \"decrypt\", \"hmac\", \
               \"verify_hmac\", \"sign\", \"get_key\", \"list_keys\", \"rotate_key\", \
               \"set_key_policy\"] }]\n";
    key_service::grants::Grants::parse(&format!("{}\n{all}", key_service::grants::DEFAULT_GRANTS))
        .unwrap()
}

/// Sentia claims for `sub` with `policies`, valid for `exp_in` seconds (negative = expired).
pub fn claims(sub: &str, exp_in: i64, policies: &[&str]) -> sentia_runtime::jwt::Claims {
    use sentia_runtime::jwt;
    let now = sentia_proto::wkt::now_secs();
    jwt::Claims {
        iss: jwt::ISSUER.into(),
        sub: sub.into(),
        aud: jwt::ISSUER.into(),
        jti: unique("jti"),
        iat: now,
        nbf: now,
        exp: now + exp_in,
        pol: policies.iter().map(|p| p.to_string()).collect(),
    }
}

/// The token table line for the test tokens, one identity each.
pub fn tokens() -> String {
    sentia_runtime::auth::TokenTable::from_plain([
        ("vault-service", Role::Service, SERVICE_TOKEN),
        ("key-service", Role::Service, KEY_TOKEN),
        ("audit-service", Role::Service, AUDIT_TOKEN),
        ("rotation-scheduler", Role::Service, SCHEDULER_KEY_TOKEN),
        ("crypto-tester", Role::Service, CRYPTO_TOKEN),
        ("operator", Role::Admin, ADMIN_TOKEN),
        ("backup-drill", Role::Service, DRILL_TOKEN),
        ("kms-plugin", Role::Service, KMS_TOKEN),
    ])
    .to_config()
}

/// A key-service running in this process.
pub struct Running {
    /// `host:port` it serves on.
    pub addr: String,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts key-service with plaintext, the test tokens, a fresh master key and `extra`
    /// settings (later pairs win, so `extra` can replace the master key or seal type; the
    /// sealed types, shamir and recovery, start without one).
    pub async fn start(database_url: &str, extra: &[(&str, &str)]) -> Self {
        Self::launch(Self::config(database_url, extra), None).await
    }

    /// The configuration [`Running::start`] runs, to adjust before [`Running::launch`].
    pub fn config(database_url: &str, extra: &[(&str, &str)]) -> Config {
        let master = MasterKey::generate().to_base64().to_string();
        let tokens = tokens();
        let mut pairs = vec![
            ("SENTIA_ALLOW_PLAINTEXT", "true"),
            ("SENTIA_DATABASE_URL", database_url),
            ("SENTIA_MASTER_KEY", master.as_str()),
            ("SENTIA_AUTH_TOKENS", tokens.as_str()),
            ("SENTIA_AUDIT_DISABLED", "true"),
        ];
        pairs.extend_from_slice(extra);
        if extra
            .iter()
            .any(|(k, v)| *k == "SENTIA_SEAL_TYPE" && (*v == "shamir" || *v == "recovery"))
        {
            pairs.retain(|(k, _)| *k != "SENTIA_MASTER_KEY");
        }
        let mut config = Config::from_source(&MapSource::from_pairs(pairs)).unwrap();
        if !extra.iter().any(|(k, _)| *k == "SENTIA_KEY_GRANTS_FILE") {
            config.grants = test_grants();
        }
        config
    }

    /// Runs `config` and waits until Status answers (over `tls` when the server has TLS).
    pub async fn launch(config: Config, tls: Option<TlsClientConfig>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let handle =
            tokio::spawn(async move { key_service::run(config, listener, stop).await.unwrap() });
        let running = Self {
            addr,
            shutdown,
            handle,
        };
        // Ready once Status answers (the listener is bound before run, so this is quick).
        for _ in 0..200 {
            if let Ok(ch) = connect(&running.addr, tls.as_ref()).await
                && SystemServiceClient::new(ch)
                    .status(sentia_proto::keys::v1::StatusRequest {})
                    .await
                    .is_ok()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        running
    }

    /// A KeyService client presenting the client certificate in `tls`.
    pub async fn client_tls(&self, tls: &TlsClientConfig) -> KeyServiceClient<AuthedChannel> {
        let channel = connect(&self.addr, Some(tls)).await.unwrap();
        KeyServiceClient::new(CallContext::with_token(None).unwrap().wrap(channel))
    }

    /// A KeyService client with `token`.
    pub async fn client(&self, token: Option<&str>) -> KeyServiceClient<AuthedChannel> {
        let channel = connect(&self.addr, None).await.unwrap();
        KeyServiceClient::new(CallContext::with_token(token).unwrap().wrap(channel))
    }

    /// A SystemService client with `token`.
    pub async fn system(&self, token: Option<&str>) -> SystemServiceClient<AuthedChannel> {
        let channel = connect(&self.addr, None).await.unwrap();
        SystemServiceClient::new(CallContext::with_token(token).unwrap().wrap(channel))
    }

    /// Rotates the master key as the admin; outside Shamir mode the answer carries the new
    /// master key.
    pub async fn rotate_master(&self) -> sentia_proto::keys::v1::RotateMasterKeyResponse {
        self.system(Some(ADMIN_TOKEN))
            .await
            .rotate_master_key(sentia_proto::keys::v1::RotateMasterKeyRequest {
                secret_shares: 0,
                secret_threshold: 0,
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// The kid of the version of signing key `key` that signs now.
    pub async fn signing_kid(&self, key: &str) -> String {
        self.client(Some(CRYPTO_TOKEN))
            .await
            .sign(sentia_proto::keys::v1::SignRequest {
                key_name: key.into(),
                message: b"m".to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .kid
    }

    /// Encrypts one byte under `vault`: the cheapest call that needs an unsealed service
    /// and a service identity.
    pub async fn encrypt_one_byte(
        &self,
        token: Option<&str>,
    ) -> Result<tonic::Response<sentia_proto::keys::v1::EncryptResponse>, tonic::Status> {
        self.client(token)
            .await
            .encrypt(sentia_proto::keys::v1::EncryptRequest {
                key_name: "vault".into(),
                plaintext: vec![1],
                encryption_context: vec![],
            })
            .await
    }

    /// A token over `claims` with header `kid`, signed by this key-service's real `sentia-jwt`
    /// key (as vault-service would sign it).
    pub async fn sign_token(&self, kid: &str, claims: &sentia_runtime::jwt::Claims) -> String {
        use sentia_runtime::jwt;
        let input = jwt::signing_input(kid, claims);
        let sig = self
            .client(Some(SERVICE_TOKEN))
            .await
            .sign(sentia_proto::keys::v1::SignRequest {
                key_name: "sentia-jwt".into(),
                message: input.as_bytes().to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        jwt::assemble(&input, &sig.signature)
    }

    /// Shuts down and waits for the server to stop.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.handle.await.unwrap();
    }
}

/// Every record of an audit log, in log order, paged through QueryEvents by `reader` (the
/// reads themselves are recorded in the log as they happen).
pub async fn audit_records(
    reader: &sentia_proto::audit::v1::audit_service_client::AuditServiceClient<AuthedChannel>,
) -> Vec<sentia_proto::audit::v1::AuditRecord> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = reader
            .clone()
            .query_events(sentia_proto::audit::v1::QueryEventsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.records);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}
