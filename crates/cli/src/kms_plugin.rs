//! `sentia kms-plugin`: the Kubernetes KMS v2 plugin, so a cluster encrypts its Secrets at rest
//! under a key-service key. kube-apiserver calls it on a unix socket; it holds no key material
//! itself — each Encrypt and Decrypt is a key-service call under the plugin's own service
//! identity (`kms-plugin`), whose grants name one key and one encryption context, and which
//! key-service audits. A key rotation shows up as a new `key_id` in Status, which is how
//! kube-apiserver learns to re-encrypt.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sentia_proto::keys::v1 as kpb;
use sentia_proto::keys::v1::key_service_client::KeyServiceClient;
use sentia_proto::kms::v2 as pb;
use sentia_proto::kms::v2::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use sentia_runtime::client::AuthedChannel;
use tonic::{Request, Response, Status};

use crate::conn::Common;

/// The encryption context of every ciphertext the plugin makes, which its grant at key-service
/// names: the key cannot be used for other data through this identity, nor this data through
/// another context.
pub const CONTEXT: &[u8] = b"kubernetes-kms";

/// Largest request kube-apiserver sends (a DEK seed is 32 bytes; ciphertexts are small).
const MAX_MESSAGE: usize = 256 * 1024;
/// How long one call may take, key-service included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls served at once on one connection.
const CONCURRENCY: usize = 32;

/// `sentia kms-plugin`.
#[derive(Args)]
pub struct KmsPluginArgs {
    /// Unix socket to serve on (the EncryptionConfiguration's `endpoint: unix://PATH`);
    /// created with mode 0600, replaced if a stale socket is there.
    #[arg(long, env = "SENTIA_KMS_SOCKET")]
    socket: PathBuf,
    /// key-service key (purpose encryption) that encrypts the cluster's key seeds.
    #[arg(
        long = "key-name",
        env = "SENTIA_KMS_KEY",
        default_value = "kubernetes-kms"
    )]
    key_name: String,
    /// key-service address.
    #[arg(long, env = "SENTIA_KEY_ADDR", default_value = "127.0.0.1:8201")]
    key_addr: String,
    #[command(flatten)]
    common: Common,
}

/// The plugin: one key at key-service.
struct Plugin {
    keys: KeyServiceClient<AuthedChannel>,
    key: String,
    /// The last key id Status saw, reported while key-service cannot be reached.
    last_key_id: Mutex<String>,
}

fn key_id(key: &str, version: u32) -> String {
    format!("{key}-v{version}")
}

#[tonic::async_trait]
impl KeyManagementService for Plugin {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let got = self
            .keys
            .clone()
            .get_key(kpb::GetKeyRequest {
                name: self.key.clone(),
            })
            .await;
        let (healthz, key_id) = match got {
            Ok(k) => {
                let id = key_id(&self.key, k.into_inner().primary_version);
                if let Ok(mut last) = self.last_key_id.lock() {
                    last.clone_from(&id);
                }
                ("ok".to_string(), id)
            }
            Err(s) => (
                format!("key-service: {:?}: {}", s.code(), s.message()),
                self.last_key_id
                    .lock()
                    .map(|l| l.clone())
                    .unwrap_or_default(),
            ),
        };
        Ok(Response::new(pb::StatusResponse {
            version: "v2".into(),
            healthz,
            key_id,
        }))
    }

    async fn encrypt(
        &self,
        req: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let r = req.into_inner();
        let sealed = self
            .keys
            .clone()
            .encrypt(kpb::EncryptRequest {
                key_name: self.key.clone(),
                plaintext: r.plaintext,
                encryption_context: CONTEXT.to_vec(),
            })
            .await?
            .into_inner();
        Ok(Response::new(pb::EncryptResponse {
            ciphertext: sealed.ciphertext,
            key_id: key_id(&self.key, sealed.key_version),
            annotations: Default::default(),
        }))
    }

    async fn decrypt(
        &self,
        req: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let r = req.into_inner();
        let opened = self
            .keys
            .clone()
            .decrypt(kpb::DecryptRequest {
                ciphertext: r.ciphertext,
                encryption_context: CONTEXT.to_vec(),
            })
            .await?
            .into_inner();
        if opened.key_name != self.key {
            return Err(Status::invalid_argument(format!(
                "the ciphertext was made with key {}, not this plugin's {}",
                opened.key_name, self.key
            )));
        }
        Ok(Response::new(pb::DecryptResponse {
            plaintext: opened.plaintext,
        }))
    }
}

/// Binds `path` with mode 0600, first removing a socket left by an earlier run (never any
/// other kind of file).
fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket; not replacing it",
            path.display()
        );
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Serves until SIGTERM or SIGINT, then removes the socket.
pub async fn run(args: KmsPluginArgs) -> anyhow::Result<()> {
    let channel = args.common.channel(&args.key_addr, "key-service").await?;
    let plugin = Plugin {
        keys: KeyServiceClient::new(channel),
        key: args.key_name.clone(),
        last_key_id: Mutex::new(String::new()),
    };
    let listener = bind(&args.socket)?;
    eprintln!(
        "sentia kms-plugin: serving KMS v2 on {} with key-service key {}",
        args.socket.display(),
        args.key_name
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let served = tonic::transport::Server::builder()
        .timeout(CALL_TIMEOUT)
        .concurrency_limit_per_connection(CONCURRENCY)
        .add_service(
            KeyManagementServiceServer::new(plugin)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stop,
        )
        .await;
    let _ = std::fs::remove_file(&args.socket);
    served.context("serving the KMS plugin")
}
