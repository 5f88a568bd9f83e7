//! The read path: the in-process record cache, then Redis, then the database; the sealed
//! record is opened with a data key from the data-key cache or key-service.

use sentia_policy::Capability;
use sentia_proto::vault::v1 as pb;
use sentia_runtime::Principal;
use sentia_runtime::audit::Detail;

use super::{SecretApi, labels_of, not_found};
use crate::VaultError;
use crate::cache::{ReadView, SealedRecord};
use crate::model::{self, SecretPath, Selector};
use crate::store::State;

impl SecretApi {
    pub(super) async fn view(&self, path: &SecretPath) -> Result<ReadView, VaultError> {
        if let Some(cache) = &self.cache {
            let hit = cache.view(path.as_str()).await;
            crate::cache::count_lookup("redis_view", hit.is_some());
            if let Some(v) = hit {
                return Ok(v);
            }
        }
        let s = self
            .store
            .secret(path.as_str())
            .await?
            .ok_or_else(|| not_found(path))?;
        let view = ReadView {
            revision: s.revision,
            content_type: s.meta.content_type,
            labels: s.labels,
            tier: s.meta.tier,
            expire_time: s.meta.expire_time,
        };
        if let Some(cache) = &self.cache {
            cache.put_view(path.as_str(), &view).await;
        }
        Ok(view)
    }

    pub(super) async fn record(
        &self,
        path: &SecretPath,
        revision: i64,
        version: u64,
    ) -> Result<SealedRecord, VaultError> {
        if let Some(cache) = &self.cache {
            let hit = cache.record(path.as_str(), version).await;
            crate::cache::count_lookup("redis_record", hit.is_some());
            if let Some(r) = hit {
                return Ok(r);
            }
        }
        let v = self
            .store
            .version(path.as_str(), version)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("{path} has no version {version}")))?;
        let rec = SealedRecord {
            state: v.state,
            key_version: v.key_version,
            ciphertext: v.ciphertext.unwrap_or_default(),
            wrapped_key: v.wrapped_key.unwrap_or_default(),
        };
        if let Some(cache) = &self.cache {
            cache
                .put_record(path.as_str(), revision, version, &rec)
                .await;
        }
        Ok(rec)
    }

    /// The version a read selects, its sealed record and the secret's read view: from the
    /// in-process cache, else Redis when configured, else one database round trip.
    pub(super) async fn locate(
        &self,
        path: &SecretPath,
        selector: &Selector,
    ) -> Result<(u64, SealedRecord, ReadView), VaultError> {
        let pick = |view: &ReadView| match selector {
            Selector::Version(v) => Some(*v),
            Selector::Label(l) => view.labels.get(l).copied(),
        };
        let unlabelled = || match selector {
            Selector::Label(l) => {
                VaultError::NotFound(format!("no version of {path} is labelled {l}"))
            }
            Selector::Version(v) => VaultError::NotFound(format!("{path} has no version {v}")),
        };
        let generation = self.local.as_ref().map(|l| l.generation());
        let local_hit = self
            .local
            .as_ref()
            .and_then(|local| local.get(path.as_str(), pick));
        if self.local.is_some() {
            crate::cache::count_lookup("local", matches!(local_hit, Some((_, Some(_)))));
        }
        if let Some((view, Some((v, rec)))) = local_hit {
            return Ok((v, rec, view));
        }
        let (view, version, rec) = if self.cache.is_some() {
            let view = self.view(path).await?;
            let version = pick(&view).ok_or_else(unlabelled)?;
            let rec = self.record(path, view.revision, version).await?;
            (view, version, rec)
        } else {
            match self.store.read(path.as_str(), selector).await? {
                Some(r) => (
                    ReadView {
                        revision: r.revision,
                        content_type: r.content_type,
                        labels: r.labels,
                        tier: r.tier,
                        expire_time: r.expire_time,
                    },
                    r.version.version,
                    SealedRecord {
                        state: r.version.state,
                        key_version: r.version.key_version,
                        ciphertext: r.version.ciphertext.unwrap_or_default(),
                        wrapped_key: r.version.wrapped_key.unwrap_or_default(),
                    },
                ),
                None if !self.store.exists(path.as_str()).await? => return Err(not_found(path)),
                None => return Err(unlabelled()),
            }
        };
        if let (Some(local), Some(g)) = (&self.local, generation) {
            local.fill(path.as_str(), g, &view, Some((version, &rec)));
        }
        Ok((version, rec, view))
    }

    /// One read, shared by GetSecret and BatchGetSecrets.
    pub(super) async fn read(
        &self,
        p: &Principal,
        req: &pb::GetSecretRequest,
        detail: &mut Detail,
    ) -> Result<pb::GetSecretResponse, VaultError> {
        let path = SecretPath::parse(&req.path)?;
        self.policies.check(p, Capability::Read, path.as_str())?;
        let selector = Selector::from_pb(req.selector.as_ref())?;
        let (version, rec, view) = self.locate(&path, &selector).await?;
        detail.key_version = Some(rec.key_version);
        detail.tier = view.tier.clamp(0, 3) as u32;
        if let Some(expire) = view.expire_time.filter(|e| *e <= self.clock.now_ms()) {
            if !req.allow_expired {
                return Err(VaultError::Precondition(format!(
                    "{path} expired at {}; extend it (UpdateSecretMetadata expire_time, or \
                     sentia secret update {path} --expires ...) or read it with allow_expired",
                    sentia_proto::wkt::utc(expire.div_euclid(1000))
                )));
            }
            detail.operation = Some("read_expired");
        }
        match rec.state {
            State::Enabled => {}
            State::Deleted => {
                return Err(VaultError::Precondition(format!(
                    "version {version} of {path} is deleted; UndeleteSecret restores it"
                )));
            }
            State::Destroyed => {
                return Err(VaultError::Precondition(format!(
                    "version {version} of {path} was destroyed; it cannot be recovered"
                )));
            }
        }
        let value = self
            .keys
            .open(
                &model::context(&path, version),
                &rec.ciphertext,
                &rec.wrapped_key,
                path.as_str(),
                version,
            )
            .await?;
        Ok(pb::GetSecretResponse {
            path: path.to_string(),
            version,
            value: value.to_vec(),
            labels: labels_of(&view.labels, version),
            content_type: view.content_type,
        })
    }
}
