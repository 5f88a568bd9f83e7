//! The SecretService implementation: validation at the edge ([`crate::model`]), a policy
//! check before anything is read (so a denied caller cannot probe which paths exist), then
//! the store, the Redis cache and key-service. The handlers are here; the read path is in
//! `read`, writes in `write`, the watch loop in `watch`.

use std::sync::Arc;

use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::secret_service_server::SecretService;
use sentia_proto::wkt::timestamp;
use sentia_runtime::audit::{Call, Detail, Emitter};
use sentia_runtime::{Principal, Shutdown};
use tonic::{Request, Response, Status};

use crate::VaultError;
use crate::cache::{Cache, LocalCache};
use crate::keys::Keys;
use crate::model::{self, Prefix, SecretPath};
use crate::store::{SecretRow, State, Store};
use crate::stream::Notifier;
use sentia_policy::{Capability, Policies};

mod read;
mod watch;
mod write;

pub use watch::{EventStream, WATCH_POLL};
pub use write::PathLocks;

/// Shared state of the SecretService.
#[derive(Clone)]
pub struct SecretApi {
    pub(crate) store: Store,
    pub(crate) keys: Arc<Keys>,
    pub(crate) cache: Option<Arc<Cache>>,
    pub(crate) local: Option<Arc<LocalCache>>,
    pub(crate) policies: Policies,
    pub(crate) notifier: Notifier,
    pub(crate) audit: Arc<Emitter>,
    pub(crate) shutdown: Shutdown,
    pub(crate) writers: Arc<PathLocks>,
    pub(crate) rewrapper: Arc<crate::rewrap::Rewrapper>,
    pub(crate) clock: sentia_runtime::Clock,
}

type Res<T> = Result<Response<T>, Status>;

fn ts(ms: Option<i64>) -> Option<prost_types::Timestamp> {
    ms.map(timestamp)
}

fn metadata_pb(s: &SecretRow) -> pb::SecretMetadata {
    pb::SecretMetadata {
        path: s.path.clone(),
        tier: s.meta.tier,
        owner: s.meta.owner.clone(),
        description: s.meta.description.clone(),
        content_type: s.meta.content_type.clone(),
        tags: s.meta.tags.clone().into_iter().collect(),
        current_version: s.current_version,
        max_versions: s.meta.max_versions,
        labels: s.labels.clone().into_iter().collect(),
        expire_time: ts(s.meta.expire_time),
        rotate_by_time: ts(s.meta.rotate_by_time),
        create_time: ts(Some(s.create_time)),
        update_time: ts(Some(s.update_time)),
    }
}

fn labels_of(labels: &std::collections::BTreeMap<String, u64>, version: u64) -> Vec<String> {
    labels
        .iter()
        .filter(|(_, v)| **v == version)
        .map(|(l, _)| l.clone())
        .collect()
}

fn not_found(path: &SecretPath) -> VaultError {
    VaultError::NotFound(format!("no secret at {path}"))
}

#[tonic::async_trait]
impl SecretService for SecretApi {
    async fn put_secret(&self, req: Request<pb::PutSecretRequest>) -> Res<pb::PutSecretResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "secret_write",
            "write",
            &req.get_ref().path,
        );
        let result: Res<pb::PutSecretResponse> = async {
            let p = Principal::of(&req)?;
            Ok(Response::new(self.put(&p, req.into_inner(), &call).await?))
        }
        .await;
        call.finish(result).await
    }

    async fn get_secret(&self, req: Request<pb::GetSecretRequest>) -> Res<pb::GetSecretResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "secret_access",
            "read",
            &req.get_ref().path,
        );
        let mut detail = Detail::default();
        let result: Res<pb::GetSecretResponse> = async {
            let p = Principal::of(&req)?;
            Ok(Response::new(
                self.read(&p, req.get_ref(), &mut detail).await?,
            ))
        }
        .await;
        call.set_detail(detail);
        call.finish(result).await
    }

    async fn batch_get_secrets(
        &self,
        req: Request<pb::BatchGetSecretsRequest>,
    ) -> Res<pb::BatchGetSecretsResponse> {
        let call = Call::new(&self.audit, &req, "secret_access", "batch_read", "");
        let p = Principal::of(&req);
        let r = req.into_inner();
        // A batch refused as a whole is recorded too, as one event with no secret name.
        let admitted = p.and_then(|p| {
            if r.requests.is_empty() || r.requests.len() > model::MAX_BATCH {
                return Err(Status::invalid_argument(format!(
                    "give 1-{} reads (got {})",
                    model::MAX_BATCH,
                    r.requests.len()
                )));
            }
            Ok(p)
        });
        let p = match admitted {
            Ok(p) => p,
            Err(e) => {
                let refused: Result<Response<pb::BatchGetSecretsResponse>, Status> = Err(e);
                return call.finish(refused).await;
            }
        };
        let mut results = Vec::with_capacity(r.requests.len());
        for one in &r.requests {
            let mut detail = Detail::default();
            let outcome = self.read(&p, one, &mut detail).await;
            let item = call.item(&one.path);
            item.set_detail(detail);
            let result = match item.finish(outcome).await {
                Ok(s) => pb::batch_get_result::Result::Secret(s),
                Err(s) if s.code() == tonic::Code::Unavailable => return Err(s),
                Err(s) => pb::batch_get_result::Result::Error(pb::BatchError {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                }),
            };
            results.push(pb::BatchGetResult {
                result: Some(result),
            });
        }
        Ok(Response::new(pb::BatchGetSecretsResponse { results }))
    }

    async fn list_secrets(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> Res<pb::ListSecretsResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "secret_list",
            "list",
            &req.get_ref().prefix,
        );
        let result: Res<pb::ListSecretsResponse> = async move {
            let p = Principal::of(&req)?;
            let r = req.into_inner();
            let prefix = Prefix::parse(&r.prefix)?;
            let page_size =
                sentia_proto::page::size(r.page_size).map_err(Status::invalid_argument)?;
            let mut after =
                sentia_proto::page::decode(&r.page_token, "vault.ListSecrets", prefix.as_str())
                    .map_err(Status::invalid_argument)?
                    .unwrap_or_default();
            let mut secrets = Vec::new();
            let mut more = false;
            // Rows the caller may not list are skipped, so keep reading until the page is full
            // (bounded: after 20 reads the page is returned short, with a token to go on).
            let mut rounds = 0;
            loop {
                rounds += 1;
                let rows = self
                    .store
                    .list(prefix.as_str(), &after, page_size as i64 + 1)
                    .await
                    .map_err(Status::from)?;
                let exhausted = rows.len() <= page_size;
                for row in rows {
                    if secrets.len() == page_size {
                        more = true;
                        break;
                    }
                    after = row.path.clone();
                    if self.policies.check(&p, Capability::List, &row.path).is_ok() {
                        secrets.push(metadata_pb(&row));
                    }
                }
                if more || exhausted {
                    break;
                }
                if rounds == 20 {
                    more = true;
                    break;
                }
            }
            let next_page_token = if more {
                sentia_proto::page::encode("vault.ListSecrets", prefix.as_str(), &after)
            } else {
                String::new()
            };
            Ok(Response::new(pb::ListSecretsResponse {
                secrets,
                next_page_token,
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn describe_secret(
        &self,
        req: Request<pb::DescribeSecretRequest>,
    ) -> Res<pb::DescribeSecretResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "secret_list",
            "describe",
            &req.get_ref().path,
        );
        let result: Res<pb::DescribeSecretResponse> = async move {
            let p = Principal::of(&req)?;
            let path = SecretPath::parse(&req.get_ref().path)?;
            self.policies.check(&p, Capability::List, path.as_str())?;
            let s = self
                .store
                .secret(path.as_str())
                .await?
                .ok_or_else(|| not_found(&path))?;
            let versions = self
                .store
                .versions(path.as_str())
                .await?
                .into_iter()
                .map(|v| pb::SecretVersion {
                    version: v.version,
                    state: v.state as i32,
                    create_time: Some(timestamp(v.create_time)),
                    created_by: v.created_by,
                    labels: labels_of(&s.labels, v.version),
                    key_version: v.key_version,
                })
                .collect();
            Ok(Response::new(pb::DescribeSecretResponse {
                metadata: Some(metadata_pb(&s)),
                versions,
            }))
        }
        .await;
        call.finish(result).await
    }

    async fn update_secret_metadata(
        &self,
        req: Request<pb::UpdateSecretMetadataRequest>,
    ) -> Res<pb::SecretMetadata> {
        let name = req
            .get_ref()
            .metadata
            .as_ref()
            .map_or("", |m| m.path.as_str());
        let call = Call::new(&self.audit, &req, "secret_write", "update_metadata", name);
        let result: Res<pb::SecretMetadata> = async {
            let p = Principal::of(&req)?;
            let r = req.into_inner();
            let m = r.metadata.ok_or_else(|| {
                Status::invalid_argument("metadata is required (metadata.path names the secret)")
            })?;
            let path = SecretPath::parse(&m.path)?;
            self.policies.check(&p, Capability::Write, path.as_str())?;
            let mask = model::mask(&r.update_mask)?.ok_or_else(|| {
                Status::invalid_argument(format!(
                    "update_mask is empty; name fields among: {}",
                    model::METADATA_FIELDS.join(", ")
                ))
            })?;
            let s = self
                .store
                .secret(path.as_str())
                .await?
                .ok_or_else(|| not_found(&path))?;
            let mut meta = s.meta.clone();
            meta.apply(&m, Some(&mask))?;
            let c = self
                .store
                .update_metadata(path.as_str(), &meta, Some(&call))
                .await?;
            self.committed(&path, &c, &c.touched_versions).await;
            let s = self
                .store
                .secret(path.as_str())
                .await?
                .ok_or_else(|| not_found(&path))?;
            Ok(Response::new(metadata_pb(&s)))
        }
        .await;
        call.finish(result).await
    }

    async fn move_label(&self, req: Request<pb::MoveLabelRequest>) -> Res<pb::SecretMetadata> {
        let call = Call::new(
            &self.audit,
            &req,
            "secret_write",
            "move_label",
            &req.get_ref().path,
        );
        let result: Res<pb::SecretMetadata> = async {
            let p = Principal::of(&req)?;
            let r = req.into_inner();
            let path = SecretPath::parse(&r.path)?;
            self.policies.check(&p, Capability::Write, path.as_str())?;
            let label = model::label(&r.label)?;
            if r.version == 0 {
                return Err(Status::invalid_argument("version must be 1 or more"));
            }
            let c = self
                .store
                .move_label(path.as_str(), &label, r.version, Some(&call))
                .await?;
            self.committed(&path, &c, &[]).await;
            tracing::info!(path = %path, label = %label, version = r.version, by = %p.id, "label moved");
            let s = self
                .store
                .secret(path.as_str())
                .await?
                .ok_or_else(|| not_found(&path))?;
            Ok(Response::new(metadata_pb(&s)))
        }
        .await;
        call.finish(result).await
    }

    async fn delete_secret(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> Res<pb::DeleteSecretResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "secret_delete",
            "delete",
            &req.get_ref().path,
        );
        let p = Principal::of(&req);
        let r = req.into_inner();
        let versions = self
            .state_rpc(&call, p, &r.path, &r.versions, State::Deleted)
            .await?;
        Ok(Response::new(pb::DeleteSecretResponse { versions }))
    }

    async fn undelete_secret(
        &self,
        req: Request<pb::UndeleteSecretRequest>,
    ) -> Res<pb::UndeleteSecretResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "secret_delete",
            "undelete",
            &req.get_ref().path,
        );
        let p = Principal::of(&req);
        let r = req.into_inner();
        let versions = self
            .state_rpc(&call, p, &r.path, &r.versions, State::Enabled)
            .await?;
        Ok(Response::new(pb::UndeleteSecretResponse { versions }))
    }

    async fn destroy_secret_versions(
        &self,
        req: Request<pb::DestroySecretVersionsRequest>,
    ) -> Res<pb::DestroySecretVersionsResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "secret_delete",
            "destroy",
            &req.get_ref().path,
        );
        let p = Principal::of(&req);
        let r = req.into_inner();
        let versions = self
            .state_rpc(&call, p, &r.path, &r.versions, State::Destroyed)
            .await?;
        Ok(Response::new(pb::DestroySecretVersionsResponse {
            versions,
        }))
    }

    async fn restore_secret_version(
        &self,
        req: Request<pb::RestoreSecretVersionRequest>,
    ) -> Res<pb::PutSecretResponse> {
        let call = Call::new(
            &self.audit,
            &req,
            "secret_write",
            "restore",
            &req.get_ref().path,
        );
        let result: Res<pb::PutSecretResponse> = async {
            let p = Principal::of(&req)?;
            Ok(Response::new(
                self.restore(&p, req.into_inner(), &call).await?,
            ))
        }
        .await;
        call.finish(result).await
    }

    type WatchSecretsStream = EventStream;

    async fn watch_secrets(
        &self,
        req: Request<pb::WatchSecretsRequest>,
    ) -> Res<Self::WatchSecretsStream> {
        let call = Call::new(
            &self.audit,
            &req,
            "secret_list",
            "watch",
            &req.get_ref().prefix,
        );
        let result: Res<Self::WatchSecretsStream> = async move {
            let p = Principal::of(&req)?;
            let stream: EventStream = Box::pin(self.watch(p, req.into_inner())?);
            Ok(Response::new(stream))
        }
        .await;
        call.finish(result).await
    }

    async fn get_rewrap_status(
        &self,
        req: Request<pb::GetRewrapStatusRequest>,
    ) -> Res<pb::RewrapStatus> {
        let call = Call::new(&self.audit, &req, "admin", "rewrap_status", "");
        let result: Res<pb::RewrapStatus> = async {
            let p = Principal::of(&req)?;
            self.policies
                .check_everywhere(&p, Capability::Admin, "reading the rewrap progress")
                .map_err(VaultError::from)?;
            let progress = self.rewrapper.progress().await?;
            Ok(Response::new(pb::RewrapStatus {
                key_name: progress.key_name.clone(),
                primary_version: progress.primary_version,
                min_decryption_version: progress.min_decryption_version,
                total: progress.total(),
                remaining: progress.remaining(),
                by_key_version: progress.by_version.clone().into_iter().collect(),
                retire_time: progress.retire_at.map(|t| {
                    let ms = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    timestamp(ms)
                }),
            }))
        }
        .await;
        call.finish(result).await
    }
}
