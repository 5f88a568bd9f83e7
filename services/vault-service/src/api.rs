//! The SecretService implementation: validation at the edge ([`crate::model`]), a policy
//! check before anything is read (so a denied caller cannot probe which paths exist), then
//! the store, the Redis cache and key-service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sentia_proto::vault::v1 as pb;
use sentia_proto::vault::v1::secret_service_server::SecretService;
use sentia_runtime::audit::{CallInfo, Detail, Emitter, Gate, audited, audited_detail};
use sentia_runtime::db::timestamp;
use sentia_runtime::{Principal, Shutdown};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::VaultError;
use crate::cache::{Cache, LocalCache, ReadView, SealedRecord};
use crate::keys::Keys;
use crate::model::{self, CURRENT, Metadata, Prefix, SecretPath, Selector};
use crate::store::{Committed, NewVersion, SecretRow, State, Store, state_name};
use crate::stream::Notifier;
use sentia_policy::{Capability, Policies};

/// Events read from the database per query while a watcher catches up.
const WATCH_BATCH: i64 = 500;
/// Watchers re-poll this often even without a notification (a lost Redis message costs at
/// most this much latency).
pub const WATCH_POLL: Duration = Duration::from_secs(2);
/// Attempts of a Put that keeps losing races to writers on other replicas (writers on this
/// replica wait their turn on [`PathLocks`] instead of racing).
const PUT_ATTEMPTS: u32 = 8;

/// Writers of one path on this replica take turns: each write reads the current version,
/// seals under a data key bound to the next one and commits only if nobody moved it, so
/// concurrent writers of a path would otherwise mostly lose and pay for a data key each time.
/// Striped by a hash of the path: bounded memory, and unrelated paths rarely share a stripe.
pub struct PathLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl PathLocks {
    /// `stripes` locks (at least one).
    pub fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: Default::default(),
        }
    }

    async fn lock(&self, path: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let stripe = self.hasher.hash_one(path) % self.stripes.len() as u64;
        self.stripes[stripe as usize].lock().await
    }
}

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

impl SecretApi {
    /// After a commit: drop cache entries, forget data keys of destroyed versions, wake
    /// watchers.
    async fn committed(&self, path: &SecretPath, c: &Committed, destroyed: &[u64]) {
        if let Some(local) = &self.local {
            local.evict_written(path.as_str(), c.sequence);
        }
        if let Some(cache) = &self.cache {
            cache
                .invalidate(path.as_str(), c.revision, &c.touched_versions)
                .await;
        }
        if !destroyed.is_empty() {
            self.keys.forget(path.as_str(), destroyed);
        }
        self.notifier.committed(c.sequence).await;
    }

    async fn view(&self, path: &SecretPath) -> Result<ReadView, VaultError> {
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
        };
        if let Some(cache) = &self.cache {
            cache.put_view(path.as_str(), &view).await;
        }
        Ok(view)
    }

    async fn record(
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

    /// The sealed record a read selects, with the content type and the version's labels:
    /// from the in-process cache, else Redis when configured, else one database round trip.
    async fn locate(
        &self,
        path: &SecretPath,
        selector: &Selector,
    ) -> Result<(u64, SealedRecord, String, Vec<String>, i32), VaultError> {
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
            return Ok((
                v,
                rec,
                view.content_type.clone(),
                labels_of(&view.labels, v),
                view.tier,
            ));
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
        let labels = labels_of(&view.labels, version);
        Ok((version, rec, view.content_type, labels, view.tier))
    }

    /// One read, shared by GetSecret and BatchGetSecrets.
    async fn read(
        &self,
        p: &Principal,
        req: &pb::GetSecretRequest,
        detail: &mut Detail,
    ) -> Result<pb::GetSecretResponse, VaultError> {
        let path = SecretPath::parse(&req.path)?;
        self.policies.check(p, Capability::Read, path.as_str())?;
        let selector = Selector::from_pb(req.selector.as_ref())?;
        let (version, rec, content_type, labels, tier) = self.locate(&path, &selector).await?;
        detail.key_version = Some(rec.key_version);
        detail.tier = tier.clamp(0, 3) as u32;
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
            content_type,
            labels,
        })
    }

    async fn put(
        &self,
        p: &Principal,
        r: pb::PutSecretRequest,
        gate: &Gate<'_>,
    ) -> Result<pb::PutSecretResponse, VaultError> {
        let path = SecretPath::parse(&r.path)?;
        self.policies.check(p, Capability::Write, path.as_str())?;
        model::value(&r.value)?;
        let request_id = model::request_id(&r.request_id)?;
        let mask = model::mask(&r.update_mask)?;
        let mut labels = Vec::new();
        for l in if r.labels.is_empty() {
            vec![CURRENT.to_string()]
        } else {
            r.labels.clone()
        } {
            let l = model::label(&l)?;
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        if labels.len() > model::MAX_LABELS_PER_PUT {
            return Err(VaultError::Invalid(format!(
                "at most {} labels per write",
                model::MAX_LABELS_PER_PUT
            )));
        }
        let earlier = |found: Option<(String, u64, i64)>| -> Result<Option<pb::PutSecretResponse>, VaultError> {
            match found {
                Some((earlier_path, _, _)) if earlier_path != path.as_str() => Err(VaultError::Invalid(format!(
                    "request_id was already used for a write to {earlier_path}; use a new request_id"
                ))),
                Some((_, version, t)) => Ok(Some(pb::PutSecretResponse {
                    version,
                    create_time: Some(timestamp(t)),
                })),
                None => Ok(None),
            }
        };
        if let Some(id) = &request_id
            && let Some(done) = earlier(self.store.put_request(&p.id, id).await?)?
        {
            return Ok(done);
        }
        let _turn = self.writers.lock(path.as_str()).await;
        for attempt in 0..PUT_ATTEMPTS {
            if attempt > 0 {
                // Lost to another replica: back off a random 1-20 ms times the attempt.
                let jitter = 1 + uuid::Uuid::new_v4().as_u128() % 20;
                tokio::time::sleep(Duration::from_millis(jitter as u64 * u64::from(attempt))).await;
            }
            let existing = self.store.secret_without_labels(path.as_str()).await?;
            let current = existing.as_ref().map_or(0, |s| s.current_version);
            if let Some(expected) = r.expected_version
                && expected != current
            {
                return Err(VaultError::Conflict(format!(
                    "check-and-set failed: {path} is at version {current}, not {expected}; read it \
                     again and retry"
                )));
            }
            let meta = match (&existing, &r.metadata) {
                (None, Some(m)) => {
                    let mut meta = Metadata::default();
                    meta.apply(m, mask.as_deref())?;
                    meta
                }
                (None, None) => Metadata::default(),
                (Some(s), Some(m)) if mask.is_some() => {
                    let mut meta = s.meta.clone();
                    meta.apply(m, mask.as_deref())?;
                    meta
                }
                (Some(s), _) => s.meta.clone(),
            };
            let version = current + 1;
            let tier = meta.tier.clamp(0, 3) as u32;
            let sealed = self
                .keys
                .seal(
                    &model::context(&path, version),
                    &r.value,
                    path.as_str(),
                    version,
                )
                .await?;
            gate.set_detail(Detail {
                key_version: Some(sealed.key_version),
                tier,
            });
            let nv = NewVersion {
                path: path.clone(),
                version,
                ciphertext: sealed.ciphertext,
                wrapped_key: sealed.wrapped_key,
                key_version: sealed.key_version,
                created_by: p.id.clone(),
                labels: labels.clone(),
                request_id: request_id.clone(),
                meta,
            };
            match self.store.put_version(&nv, Some(gate)).await {
                Ok(c) => {
                    self.committed(&path, &c, &c.touched_versions).await;
                    tracing::info!(path = %path, version, by = %p.id, "secret version written");
                    return Ok(pb::PutSecretResponse {
                        version,
                        create_time: Some(timestamp(c.time)),
                    });
                }
                Err(VaultError::Conflict(m)) => {
                    if let Some(id) = &request_id
                        && let Some(done) = earlier(self.store.put_request(&p.id, id).await?)?
                    {
                        return Ok(done);
                    }
                    if r.expected_version.is_some() {
                        return Err(VaultError::Conflict(format!("check-and-set failed: {m}")));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(VaultError::Contended(format!(
            "{path} is being written by other replicas too often; retry (the write did not happen)"
        )))
    }

    fn versions_arg(versions: &[u64]) -> Result<Vec<u64>, VaultError> {
        if versions.len() > model::MAX_MAX_VERSIONS as usize {
            return Err(VaultError::Invalid(format!(
                "at most {} versions per call",
                model::MAX_MAX_VERSIONS
            )));
        }
        if versions.contains(&0) {
            return Err(VaultError::Invalid("versions start at 1".into()));
        }
        Ok(versions.to_vec())
    }

    async fn change_state(
        &self,
        p: &Principal,
        path: &str,
        versions: &[u64],
        to: State,
        gate: &Gate<'_>,
    ) -> Result<Vec<u64>, VaultError> {
        let path = SecretPath::parse(path)?;
        self.policies.check(p, Capability::Delete, path.as_str())?;
        let versions = Self::versions_arg(versions)?;
        if to == State::Destroyed && versions.is_empty() {
            return Err(VaultError::Invalid(
                "name the versions to destroy (at least one); destruction is irreversible".into(),
            ));
        }
        let (changed, c) = self
            .store
            .set_state(path.as_str(), &versions, to, Some(gate))
            .await?;
        let destroyed = if to == State::Destroyed {
            changed.clone()
        } else {
            vec![]
        };
        self.committed(&path, &c, &destroyed).await;
        tracing::info!(path = %path, versions = ?changed, state = state_name(to), by = %p.id, "secret versions changed");
        Ok(changed)
    }

    /// Delete, Undelete and Destroy as RPCs: the state change, recorded in the audit log
    /// before it commits.
    async fn state_rpc(
        &self,
        info: &CallInfo,
        principal: Result<Principal, Status>,
        path: &str,
        versions: &[u64],
        to: State,
        operation: &'static str,
    ) -> Result<Vec<u64>, Status> {
        let gate = Gate::new(&self.audit, info, "secret_delete", operation, path);
        let result = match principal {
            Ok(p) => self
                .change_state(&p, path, versions, to, &gate)
                .await
                .map_err(Status::from),
            Err(s) => Err(s),
        };
        gate.finish(result).await
    }

    fn watch(
        &self,
        p: Principal,
        r: pb::WatchSecretsRequest,
    ) -> Result<ReceiverStream<Result<pb::SecretEvent, Status>>, VaultError> {
        let prefix = Prefix::parse(&r.prefix)?;
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        let mut head_rx = self.notifier.subscribe();
        let bounds = async move {
            let (oldest, head) = this.store.stream_bounds().await?;
            let start = match r.after_sequence {
                0 => head,
                a if a > head => {
                    return Err(VaultError::OutOfRange(format!(
                        "after_sequence {a} is ahead of the stream head {head}"
                    )));
                }
                a if a + 1 < oldest => {
                    return Err(VaultError::OutOfRange(format!(
                        "events after {a} are no longer retained (oldest is {oldest}); re-read \
                         the secrets you track and watch from 0"
                    )));
                }
                a => a,
            };
            Ok::<_, VaultError>((this, start))
        };
        tokio::spawn(async move {
            let (this, mut last) = match bounds.await {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            let bookmark = |sequence| pb::SecretEvent {
                sequence,
                kind: pb::EventKind::Bookmark as i32,
                time: Some(timestamp(sentia_runtime::db::now_ms())),
                ..Default::default()
            };
            if tx.send(Ok(bookmark(last))).await.is_err() {
                return;
            }
            let mut told = last;
            loop {
                if p.expires_at
                    .is_some_and(|e| e <= sentia_runtime::jwt::now_secs())
                {
                    let _ = tx
                        .send(Err(Status::unauthenticated(
                            "token expired; log in again and resume from the last sequence",
                        )))
                        .await;
                    return;
                }
                let batch = match this.store.events_after(last, WATCH_BATCH).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if let Some(first) = batch.first()
                    && first.sequence != last + 1
                {
                    let _ = tx.send(Err(Status::out_of_range(format!(
                        "events {}..{} were trimmed before this watcher read them; re-read and watch from 0",
                        last + 1,
                        first.sequence - 1
                    )))).await;
                    return;
                }
                let full = batch.len() as i64 == WATCH_BATCH;
                for e in batch {
                    last = e.sequence;
                    if !prefix.matches(&e.path)
                        || this.policies.check(&p, Capability::List, &e.path).is_err()
                    {
                        continue;
                    }
                    let event = pb::SecretEvent {
                        sequence: e.sequence,
                        kind: e.kind,
                        path: e.path,
                        versions: e.versions,
                        label: e.label,
                        time: Some(timestamp(e.time)),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                    told = last;
                }
                if full {
                    continue;
                }
                if last > told {
                    if tx.send(Ok(bookmark(last))).await.is_err() {
                        return;
                    }
                    told = last;
                }
                tokio::select! {
                    _ = head_rx.changed() => {}
                    _ = tokio::time::sleep(WATCH_POLL) => {}
                    _ = tx.closed() => return,
                    _ = this.shutdown.wait() => return,
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// Stream type of WatchSecrets.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SecretEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SecretService for SecretApi {
    async fn put_secret(&self, req: Request<pb::PutSecretRequest>) -> Res<pb::PutSecretResponse> {
        let info = CallInfo::of(&req);
        let gate = Gate::new(
            &self.audit,
            &info,
            "secret_write",
            "write",
            &req.get_ref().path,
        );
        let result: Res<pb::PutSecretResponse> = async {
            let p = Principal::of(&req)?;
            Ok(Response::new(self.put(&p, req.into_inner(), &gate).await?))
        }
        .await;
        gate.finish(result).await
    }

    async fn get_secret(&self, req: Request<pb::GetSecretRequest>) -> Res<pb::GetSecretResponse> {
        let info = CallInfo::of(&req);
        let name = req.get_ref().path.clone();
        let mut detail = Detail::default();
        let result: Res<pb::GetSecretResponse> = async {
            let p = Principal::of(&req)?;
            Ok(Response::new(
                self.read(&p, req.get_ref(), &mut detail).await?,
            ))
        }
        .await;
        audited_detail(
            &self.audit,
            &info,
            "secret_access",
            "read",
            &name,
            result,
            detail,
        )
        .await
    }

    async fn batch_get_secrets(
        &self,
        req: Request<pb::BatchGetSecretsRequest>,
    ) -> Res<pb::BatchGetSecretsResponse> {
        let info = CallInfo::of(&req);
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
                return audited(
                    &self.audit,
                    &info,
                    "secret_access",
                    "batch_read",
                    "",
                    refused,
                )
                .await;
            }
        };
        let mut results = Vec::with_capacity(r.requests.len());
        for one in &r.requests {
            let mut detail = Detail::default();
            let outcome = self.read(&p, one, &mut detail).await;
            let result = match audited_detail(
                &self.audit,
                &info,
                "secret_access",
                "batch_read",
                &one.path,
                outcome,
                detail,
            )
            .await
            {
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
        let info = CallInfo::of(&req);
        let name = req.get_ref().prefix.clone();
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
        audited(&self.audit, &info, "secret_list", "list", &name, result).await
    }

    async fn describe_secret(
        &self,
        req: Request<pb::DescribeSecretRequest>,
    ) -> Res<pb::DescribeSecretResponse> {
        let info = CallInfo::of(&req);
        let name = req.get_ref().path.clone();
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
        audited(&self.audit, &info, "secret_list", "describe", &name, result).await
    }

    async fn update_secret_metadata(
        &self,
        req: Request<pb::UpdateSecretMetadataRequest>,
    ) -> Res<pb::SecretMetadata> {
        let info = CallInfo::of(&req);
        let name = req
            .get_ref()
            .metadata
            .as_ref()
            .map(|m| m.path.clone())
            .unwrap_or_default();
        let gate = Gate::new(&self.audit, &info, "secret_write", "update_metadata", &name);
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
                .update_metadata(path.as_str(), &meta, Some(&gate))
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
        gate.finish(result).await
    }

    async fn move_label(&self, req: Request<pb::MoveLabelRequest>) -> Res<pb::SecretMetadata> {
        let info = CallInfo::of(&req);
        let gate = Gate::new(
            &self.audit,
            &info,
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
                .move_label(path.as_str(), &label, r.version, Some(&gate))
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
        gate.finish(result).await
    }

    async fn delete_secret(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> Res<pb::DeleteSecretResponse> {
        let (info, p) = (CallInfo::of(&req), Principal::of(&req));
        let r = req.into_inner();
        let versions = self
            .state_rpc(&info, p, &r.path, &r.versions, State::Deleted, "delete")
            .await?;
        Ok(Response::new(pb::DeleteSecretResponse { versions }))
    }

    async fn undelete_secret(
        &self,
        req: Request<pb::UndeleteSecretRequest>,
    ) -> Res<pb::UndeleteSecretResponse> {
        let (info, p) = (CallInfo::of(&req), Principal::of(&req));
        let r = req.into_inner();
        let versions = self
            .state_rpc(&info, p, &r.path, &r.versions, State::Enabled, "undelete")
            .await?;
        Ok(Response::new(pb::UndeleteSecretResponse { versions }))
    }

    async fn destroy_secret_versions(
        &self,
        req: Request<pb::DestroySecretVersionsRequest>,
    ) -> Res<pb::DestroySecretVersionsResponse> {
        let (info, p) = (CallInfo::of(&req), Principal::of(&req));
        let r = req.into_inner();
        let versions = self
            .state_rpc(&info, p, &r.path, &r.versions, State::Destroyed, "destroy")
            .await?;
        Ok(Response::new(pb::DestroySecretVersionsResponse {
            versions,
        }))
    }

    type WatchSecretsStream = EventStream;

    async fn watch_secrets(
        &self,
        req: Request<pb::WatchSecretsRequest>,
    ) -> Res<Self::WatchSecretsStream> {
        let info = CallInfo::of(&req);
        let name = req.get_ref().prefix.clone();
        let result: Res<Self::WatchSecretsStream> = async move {
            let p = Principal::of(&req)?;
            let stream: EventStream = Box::pin(self.watch(p, req.into_inner())?);
            Ok(Response::new(stream))
        }
        .await;
        audited(&self.audit, &info, "secret_list", "watch", &name, result).await
    }
}
