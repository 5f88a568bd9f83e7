//! The RotationService. Reading policies and status needs `rotate` or `list` on the path;
//! setting a policy or rotating needs `rotate` (for a glob: on the glob itself, so only a
//! caller holding rotate over everything it covers may set it). Every call is audited.

use std::sync::Arc;

use sentia_policy::{Capability, Policies};
use sentia_proto::rotation::v1 as pb;
use sentia_proto::rotation::v1::rotation_service_server::RotationService;
use sentia_proto::wkt::timestamp;
use sentia_runtime::Principal;
use sentia_runtime::audit::{Call, Emitter};
use tonic::{Request, Response, Status};

use crate::RotationError;
use crate::engine::{Engine, SecretStatus, ts_ms};
use crate::policy::{Applied, RotationPolicy, applicable};
use crate::schedule::State;
use crate::store::RotationRecord;

/// Shared state of the RotationService.
#[derive(Clone)]
pub struct RotationApi {
    engine: Engine,
    policies: Policies,
    emitter: Arc<Emitter>,
}

type Res<T> = Result<Response<T>, Status>;

fn page_size(n: i32) -> Result<usize, RotationError> {
    sentia_proto::page::size(n).map_err(RotationError::Invalid)
}

/// The contract's view of a stored rotation.
pub fn to_proto(r: &RotationRecord) -> pb::Rotation {
    pb::Rotation {
        id: r.id.clone(),
        path: r.path.clone(),
        step: r.state.step as i32,
        attempts: r.state.attempts,
        pending_version: r.pending_version,
        last_error: r.state.last_error.clone().unwrap_or_default(),
        start_time: Some(timestamp(r.start_ms)),
        update_time: Some(timestamp(r.update_ms)),
        reason: r.reason.clone(),
        emergency: r.emergency,
    }
}

impl RotationApi {
    /// Wraps the engine (which owns the store and vault client).
    pub fn new(engine: Engine, policies: Policies, emitter: Arc<Emitter>) -> Self {
        Self {
            engine,
            policies,
            emitter,
        }
    }

    /// `rotate` or `list` on `path`.
    fn may_read(&self, p: &Principal, path: &str) -> Result<(), RotationError> {
        self.policies
            .check(p, Capability::Rotate, path)
            .or_else(|_| self.policies.check(p, Capability::List, path))
            .map_err(RotationError::from)
    }

    async fn policy_for(&self, path: &str) -> Result<Applied, RotationError> {
        let stored = self.engine.store.policies().await?;
        let secret = if stored.iter().any(|p| p.covers(path)) {
            None
        } else {
            self.engine
                .vault
                .describe(path)
                .await?
                .and_then(|d| d.metadata)
        };
        applicable(&stored, path, secret.as_ref()).ok_or_else(|| {
            RotationError::NotFound(format!(
                "no secret {path} exists and no stored policy covers it: write the secret \
                 first (it then gets its class or tier default), or set a policy with SetPolicy"
            ))
        })
    }

    async fn set_policy(
        &self,
        p: &Principal,
        req: pb::SetPolicyRequest,
        call: &Call<'_>,
    ) -> Result<pb::RotationPolicy, RotationError> {
        let raw = req
            .policy
            .ok_or_else(|| RotationError::Invalid("policy is required".into()))?;
        self.policies
            .check(p, Capability::Rotate, &raw.path_pattern)?;
        let policy = RotationPolicy::from_proto(raw)?;
        call.admit()
            .await
            .map_err(RotationError::AuditUnavailable)?;
        self.engine
            .store
            .put_policy(&policy, &p.id, self.engine.hooks.clock.now_ms())
            .await?;
        Ok(policy.to_proto())
    }

    async fn list(
        &self,
        p: &Principal,
        req: pb::ListRotationsRequest,
    ) -> Result<pb::ListRotationsResponse, RotationError> {
        let size = page_size(req.page_size)?;
        let now = self.engine.hooks.clock.now_ms();
        let snap = self.engine.snapshot().await?;
        let scope = format!("{}|overdue_only={}", req.prefix, req.overdue_only);
        let after = sentia_proto::page::decode(&req.page_token, "rotation.ListRotations", &scope)
            .map_err(RotationError::Invalid)?;
        let mut out = Vec::new();
        let mut next = String::new();
        for meta in self.engine.vault.list(&req.prefix).await? {
            if after.as_deref().is_some_and(|a| meta.path.as_str() <= a) {
                continue;
            }
            if self.may_read(p, &meta.path).is_err() {
                continue;
            }
            let SecretStatus {
                policy,
                source,
                last_ms: last,
                standing,
            } = self.engine.status(&snap, &meta, now).await?;
            let overdue = standing.state == State::Overdue;
            if req.overdue_only && !overdue {
                continue;
            }
            if out.len() == size {
                next = out
                    .last()
                    .map(|s: &pb::RotationStatus| {
                        sentia_proto::page::encode("rotation.ListRotations", &scope, &s.path)
                    })
                    .unwrap_or_default();
                break;
            }
            out.push(pb::RotationStatus {
                path: meta.path.clone(),
                policy_pattern: policy.pattern.clone(),
                method: policy.timing.method as i32,
                last_rotation_time: Some(timestamp(last)),
                next_due_time: Some(timestamp(standing.due_ms)),
                overdue,
                last_rotation: snap.latest.get(&meta.path).map(to_proto),
                notice_time: Some(timestamp(standing.notify_from_ms)),
                notice_sent_time: snap
                    .notices
                    .get(&(meta.path.clone(), standing.due_ms))
                    .map(|ms| timestamp(*ms)),
                expire_time: meta.expire_time,
                policy: Some(Applied { policy, source }.to_proto()),
            });
        }
        Ok(pb::ListRotationsResponse {
            rotations: out,
            next_page_token: next,
        })
    }

    async fn rotate_now(
        &self,
        p: &Principal,
        req: pb::RotateNowRequest,
        call: &Call<'_>,
    ) -> Result<pb::Rotation, RotationError> {
        self.policies.check(p, Capability::Rotate, &req.path)?;
        let reason = req.reason.trim();
        if reason.is_empty() || reason.chars().count() > 512 {
            return Err(RotationError::Invalid(
                "reason is required (at most 512 characters): it is recorded in the audit log"
                    .into(),
            ));
        }
        let Some(meta) = self
            .engine
            .vault
            .describe(&req.path)
            .await?
            .and_then(|d| d.metadata)
        else {
            return Err(RotationError::NotFound(format!(
                "secret {} does not exist",
                req.path
            )));
        };
        let now = self.engine.hooks.clock.now_ms();
        if let Some(expire) = meta.expire_time.filter(|t| ts_ms(t) <= now) {
            return Err(RotationError::Precondition(format!(
                "{} expired at {}: its value cannot be read to rotate it; extend it first \
                 (sentia secret update {} --expires ...)",
                req.path,
                sentia_proto::wkt::utc(expire.seconds),
                req.path
            )));
        }
        let policy = self.policy_for(&req.path).await?.policy;
        if policy.rotator.is_none() {
            return Err(RotationError::Precondition(format!(
                "the policy for {} ({}) has no rotator; write a new version yourself, or set \
                 a policy with a rotator",
                req.path, policy.pattern
            )));
        }
        call.admit()
            .await
            .map_err(RotationError::AuditUnavailable)?;
        let r = self
            .engine
            .start(&req.path, policy, reason, req.emergency, &p.id, now)
            .await?;
        Ok(to_proto(&r))
    }

    async fn history(
        &self,
        p: &Principal,
        req: pb::GetRotationHistoryRequest,
    ) -> Result<pb::GetRotationHistoryResponse, RotationError> {
        self.may_read(p, &req.path)?;
        let size = page_size(req.page_size)? as i64;
        let skip: i64 =
            match sentia_proto::page::decode(&req.page_token, "rotation.History", &req.path)
                .map_err(RotationError::Invalid)?
            {
                None => 0,
                Some(p) => p.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    RotationError::Invalid("page_token does not hold a position".into())
                })?,
            };
        let mut rows = self.engine.store.history(&req.path, skip, size + 1).await?;
        let more = rows.len() as i64 > size;
        rows.truncate(size as usize);
        Ok(pb::GetRotationHistoryResponse {
            rotations: rows.iter().map(to_proto).collect(),
            next_page_token: if more {
                sentia_proto::page::encode(
                    "rotation.History",
                    &req.path,
                    &(skip + size).to_string(),
                )
            } else {
                String::new()
            },
        })
    }
}

#[tonic::async_trait]
impl RotationService for RotationApi {
    async fn set_policy(&self, req: Request<pb::SetPolicyRequest>) -> Res<pb::RotationPolicy> {
        let name = req
            .get_ref()
            .policy
            .as_ref()
            .map_or("", |x| x.path_pattern.as_str());
        let call = Call::new(&self.emitter, &req, "rotation", "set_policy", name);
        let r = async {
            let p = Principal::of(&req)?;
            Ok::<_, Status>(self.set_policy(&p, req.into_inner(), &call).await?)
        }
        .await;
        call.finish(r).await.map(Response::new)
    }

    async fn get_policy(&self, req: Request<pb::GetPolicyRequest>) -> Res<pb::RotationPolicy> {
        let call = Call::new(
            &self.emitter,
            &req,
            "rotation",
            "get_policy",
            &req.get_ref().path,
        );
        let r = async {
            let p = Principal::of(&req)?;
            let path = &req.get_ref().path;
            self.may_read(&p, path)?;
            Ok::<_, Status>(self.policy_for(path).await?.to_proto())
        }
        .await;
        call.finish(r).await.map(Response::new)
    }

    async fn list_rotations(
        &self,
        req: Request<pb::ListRotationsRequest>,
    ) -> Res<pb::ListRotationsResponse> {
        let call = Call::new(
            &self.emitter,
            &req,
            "rotation",
            "list_rotations",
            &req.get_ref().prefix,
        );
        let r = async {
            let p = Principal::of(&req)?;
            Ok::<_, Status>(self.list(&p, req.into_inner()).await?)
        }
        .await;
        call.finish(r).await.map(Response::new)
    }

    async fn rotate_now(&self, req: Request<pb::RotateNowRequest>) -> Res<pb::Rotation> {
        let op = if req.get_ref().emergency {
            "rotate_now_emergency"
        } else {
            "rotate_now"
        };
        let call = Call::new(&self.emitter, &req, "rotation", op, &req.get_ref().path);
        let r = async {
            let p = Principal::of(&req)?;
            Ok::<_, Status>(self.rotate_now(&p, req.into_inner(), &call).await?)
        }
        .await;
        call.finish(r).await.map(Response::new)
    }

    async fn get_rotation_history(
        &self,
        req: Request<pb::GetRotationHistoryRequest>,
    ) -> Res<pb::GetRotationHistoryResponse> {
        let call = Call::new(
            &self.emitter,
            &req,
            "rotation",
            "history",
            &req.get_ref().path,
        );
        let r = async {
            let p = Principal::of(&req)?;
            Ok::<_, Status>(self.history(&p, req.into_inner()).await?)
        }
        .await;
        call.finish(r).await.map(Response::new)
    }
}
