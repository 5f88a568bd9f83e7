//! Optional Redis cache of *sealed* records: a secret's read view (revision, content type,
//! labels) and each version's ciphertext + wrapped data key. Never a plaintext value or an
//! unwrapped key. A write bumps the secret's revision in Redis and deletes the entries it
//! changed; a reader may only fill the cache with data at least as new as that revision
//! (checked atomically in Lua), so a slow reader cannot put back what a writer removed.
//! Every Redis failure is logged and treated as a miss: the database answers instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::store::State;

/// A secret's read view: what a Get needs besides the version record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadView {
    /// Revision the view was read at.
    pub revision: i64,
    /// Content type.
    pub content_type: String,
    /// Label -> version.
    pub labels: BTreeMap<String, u64>,
    /// The secret's tier (for audit events).
    #[serde(default)]
    pub tier: i32,
    /// When the secret expires (Unix ms): reads refuse it from then on.
    #[serde(default)]
    pub expire_time: Option<i64>,
}

/// A version's sealed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    /// State.
    pub state: State,
    /// key-service key version of the wrap.
    pub key_version: u32,
    /// Sealed value (empty once destroyed).
    pub ciphertext: Vec<u8>,
    /// Wrapped data key (empty once destroyed).
    pub wrapped_key: Vec<u8>,
}

impl SealedRecord {
    /// `state | key_version | len(ciphertext) | ciphertext | wrapped_key`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.ciphertext.len() + self.wrapped_key.len());
        out.push(self.state as u8);
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(&(self.ciphertext.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        out.extend_from_slice(&self.wrapped_key);
        out
    }

    /// Parses [`Self::encode`]'s output; `None` for anything else (treated as a miss).
    pub fn decode(b: &[u8]) -> Option<Self> {
        let state = match *b.first()? {
            1 => State::Enabled,
            2 => State::Deleted,
            3 => State::Destroyed,
            _ => return None,
        };
        let key_version = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
        let len = u32::from_be_bytes(b.get(5..9)?.try_into().ok()?) as usize;
        let ciphertext = b.get(9..9usize.checked_add(len)?)?.to_vec();
        let wrapped_key = b.get(9 + len..)?.to_vec();
        Some(Self {
            state,
            key_version,
            ciphertext,
            wrapped_key,
        })
    }
}

/// Fill `KEYS[2]` with `ARGV[2]` (TTL `ARGV[3]` ms) unless `KEYS[1]` (the secret's latest
/// known revision) is newer than `ARGV[1]`.
const GUARDED_SET: &str = r"
local rev = tonumber(redis.call('GET', KEYS[1]) or '0')
if rev <= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// Raise `KEYS[1]` to `ARGV[1]` (TTL `ARGV[2]` ms) and delete `KEYS[2..]`.
const INVALIDATE: &str = r"
local rev = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > rev then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if #KEYS > 1 then
  redis.call('DEL', unpack(KEYS, 2))
end
return 1";

/// How long a revision marker outlives the entries it guards.
const REVISION_TTL: Duration = Duration::from_secs(86_400);

/// The Redis cache (absent when `SENTIA_REDIS_URL` is unset).
pub struct Cache {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    guarded_set: redis::Script,
    invalidate: redis::Script,
    failures: AtomicU64,
}

impl Cache {
    /// A lazily connecting cache: Redis being down at start is not an error.
    pub fn new(url: &str, prefix: &str, ttl: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("SENTIA_REDIS_URL: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("redis: {e}"))?;
        Ok(Self {
            conn,
            prefix: format!("{prefix}vault:"),
            ttl_ms: ttl.as_millis().max(1) as u64,
            guarded_set: redis::Script::new(GUARDED_SET),
            invalidate: redis::Script::new(INVALIDATE),
            failures: AtomicU64::new(0),
        })
    }

    fn rev_key(&self, path: &str) -> String {
        format!("{}rev:{path}", self.prefix)
    }

    fn view_key(&self, path: &str) -> String {
        format!("{}view:{path}", self.prefix)
    }

    fn record_key(&self, path: &str, version: u64) -> String {
        format!("{}rec:{path}:{version}", self.prefix)
    }

    fn failed(&self, op: &str, e: &redis::RedisError) {
        // Log the first failure and then every 100th, so an outage does not flood the log.
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(100) {
            tracing::warn!(op, error = %e, failures = n + 1, "redis cache unavailable; using the database");
        }
    }

    async fn get_bytes(&self, key: String, op: &str) -> Option<Vec<u8>> {
        let mut conn = self.conn.clone();
        match redis::cmd("GET")
            .arg(key)
            .query_async::<Option<Vec<u8>>>(&mut conn)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.failed(op, &e);
                None
            }
        }
    }

    async fn fill(&self, path: &str, revision: i64, key: String, value: Vec<u8>, op: &str) {
        let mut conn = self.conn.clone();
        let r = self
            .guarded_set
            .key(self.rev_key(path))
            .key(key)
            .arg(revision)
            .arg(value)
            .arg(self.ttl_ms)
            .invoke_async::<i64>(&mut conn)
            .await;
        if let Err(e) = r {
            self.failed(op, &e);
        }
    }

    /// The cached read view of `path`.
    pub async fn view(&self, path: &str) -> Option<ReadView> {
        let b = self.get_bytes(self.view_key(path), "get view").await?;
        serde_json::from_slice(&b).ok()
    }

    /// Caches a read view read from the database at `view.revision`.
    pub async fn put_view(&self, path: &str, view: &ReadView) {
        if let Ok(b) = serde_json::to_vec(view) {
            self.fill(path, view.revision, self.view_key(path), b, "put view")
                .await;
        }
    }

    /// The cached sealed record of one version.
    pub async fn record(&self, path: &str, version: u64) -> Option<SealedRecord> {
        let b = self
            .get_bytes(self.record_key(path, version), "get record")
            .await?;
        SealedRecord::decode(&b)
    }

    /// Caches a sealed record read from the database while the secret was at `revision`.
    pub async fn put_record(&self, path: &str, revision: i64, version: u64, rec: &SealedRecord) {
        self.fill(
            path,
            revision,
            self.record_key(path, version),
            rec.encode(),
            "put record",
        )
        .await;
    }

    /// After a committed change at `revision`: drops the view and the records of `versions`.
    pub async fn invalidate(&self, path: &str, revision: i64, versions: &[u64]) {
        let mut inv = self.invalidate.key(self.rev_key(path));
        inv.key(self.view_key(path));
        for v in versions {
            inv.key(self.record_key(path, *v));
        }
        inv.arg(revision).arg(REVISION_TTL.as_millis() as u64);
        let mut conn = self.conn.clone();
        if let Err(e) = inv.invoke_async::<i64>(&mut conn).await {
            self.failed("invalidate", &e);
        }
    }

    /// Publishes a change-stream position to the other replicas.
    pub async fn publish(&self, channel: &str, sequence: u64) {
        let mut conn = self.conn.clone();
        if let Err(e) = redis::cmd("PUBLISH")
            .arg(format!("{}{channel}", self.prefix))
            .arg(sequence)
            .query_async::<i64>(&mut conn)
            .await
        {
            self.failed("publish", &e);
        }
    }

    /// Full channel name for `channel`.
    pub fn channel(&self, channel: &str) -> String {
        format!("{}{channel}", self.prefix)
    }
}

struct LocalEntry {
    at: Instant,
    view: ReadView,
    records: HashMap<u64, SealedRecord>,
}

/// In-process cache of the same sealed records, in front of Redis and the database. This
/// replica's writes evict synchronously; other replicas' writes evict when their change-stream
/// events arrive (at once through Redis pub/sub, within the watch poll interval without it).
/// A fill is dropped if any eviction happened while it was being read, so a slow reader
/// cannot put back what a write removed.
pub struct LocalCache {
    ttl: Duration,
    max: usize,
    entries: Mutex<LocalEntries>,
    generation: AtomicU64,
}

/// The cached secrets, and for paths this replica wrote, the highest change-stream sequence
/// its own eviction already covered.
#[derive(Default)]
struct LocalEntries {
    secrets: HashMap<String, LocalEntry>,
    evicted_through: HashMap<String, u64>,
}

impl LocalCache {
    /// A cache of up to `max` secrets, each kept at most `ttl`.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            entries: Mutex::new(LocalEntries::default()),
            generation: AtomicU64::new(0),
        }
    }

    /// Take before reading from Redis or the database; pass to the fill.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The cached view and, if cached, the record of the version `pick` selects from it.
    pub fn get(
        &self,
        path: &str,
        pick: impl FnOnce(&ReadView) -> Option<u64>,
    ) -> Option<(ReadView, Option<(u64, SealedRecord)>)> {
        let mut entries = self.entries.lock().ok()?;
        let map = &mut entries.secrets;
        let e = map.get(path)?;
        if e.at.elapsed() >= self.ttl {
            map.remove(path);
            return None;
        }
        let rec = pick(&e.view).and_then(|v| e.records.get(&v).map(|r| (v, r.clone())));
        Some((e.view.clone(), rec))
    }

    /// Stores a view (and a record of one of its versions) read at `generation`.
    pub fn fill(
        &self,
        path: &str,
        generation: u64,
        view: &ReadView,
        record: Option<(u64, &SealedRecord)>,
    ) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let map = &mut entries.secrets;
        // Checked under the lock that evictions also take, so no eviction slips in between.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= self.max && !map.contains_key(path) {
            let ttl = self.ttl;
            map.retain(|_, e| e.at.elapsed() < ttl);
            if map.len() >= self.max
                && let Some(k) = map.keys().next().cloned()
            {
                map.remove(&k);
            }
        }
        let e = map.entry(path.to_string()).or_insert_with(|| LocalEntry {
            at: Instant::now(),
            view: view.clone(),
            records: HashMap::new(),
        });
        if e.view.revision != view.revision {
            *e = LocalEntry {
                at: Instant::now(),
                view: view.clone(),
                records: HashMap::new(),
            };
        }
        if let Some((v, r)) = record {
            e.records.insert(v, r.clone());
        }
    }

    /// Drops `path`'s entry after this replica's write, whose events end at `sequence`. The
    /// change stream will report those events again; [`LocalCache::evict_changed`] then
    /// knows this eviction already covered them.
    pub fn evict_written(&self, path: &str, sequence: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            entries.secrets.remove(path);
            if entries.evicted_through.len() >= self.max.saturating_mul(4) {
                // Forgetting only costs extra evictions.
                entries.evicted_through.clear();
            }
            let through = entries.evicted_through.entry(path.to_string()).or_default();
            *through = (*through).max(sequence);
        }
    }

    /// Drops the entries of paths the change stream reports changed (`(path, sequence)` in
    /// stream order), except where this replica's own eviction after a later-or-equal write
    /// already covered the change: every fill since then read a state that includes it. So a
    /// replica's own writes no longer evict entries refilled after them.
    pub fn evict_changed<'a>(&self, events: impl IntoIterator<Item = (&'a str, u64)>) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let mut bumped = false;
        for (path, sequence) in events {
            match entries.evicted_through.get(path).copied() {
                Some(through) if through >= sequence => {
                    if through == sequence {
                        entries.evicted_through.remove(path);
                    }
                    continue;
                }
                Some(_) => {
                    entries.evicted_through.remove(path);
                }
                None => {}
            }
            if !bumped {
                self.generation.fetch_add(1, Ordering::AcqRel);
                bumped = true;
            }
            entries.secrets.remove(path);
        }
    }
}

/// Counts a cache lookup as the OpenTelemetry counter `sentia.vault.cache.lookups`
/// (`cache`: local, redis_view or redis_record; `result`: hit or miss): hit ratio = hits /
/// lookups.
pub fn count_lookup(cache: &'static str, hit: bool) {
    static LOOKUPS: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    LOOKUPS
        .get_or_init(|| {
            opentelemetry::global::meter("vault-service")
                .u64_counter("sentia.vault.cache.lookups")
                .with_description("Sealed-record cache lookups by cache and result")
                .build()
        })
        .add(
            1,
            &[
                opentelemetry::KeyValue::new("cache", cache),
                opentelemetry::KeyValue::new("result", if hit { "hit" } else { "miss" }),
            ],
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(revision: i64) -> ReadView {
        ReadView {
            revision,
            content_type: "text/plain".into(),
            labels: BTreeMap::from([("CURRENT".to_string(), 1)]),
            tier: 3,
            expire_time: None,
        }
    }

    fn record() -> SealedRecord {
        SealedRecord {
            state: State::Enabled,
            key_version: 1,
            ciphertext: vec![1],
            wrapped_key: vec![2],
        }
    }

    #[test]
    fn a_fill_that_raced_an_eviction_is_dropped() {
        let c = LocalCache::new(Duration::from_secs(60), 10);
        let g = c.generation();
        c.evict_changed([("prod/a", 1)]);
        c.fill("prod/a", g, &view(1), Some((1, &record())));
        assert!(
            c.get("prod/a", |v| v.labels.get("CURRENT").copied())
                .is_none()
        );
        let g = c.generation();
        c.fill("prod/a", g, &view(1), Some((1, &record())));
        let (_, rec) = c
            .get("prod/a", |v| v.labels.get("CURRENT").copied())
            .unwrap();
        assert_eq!(rec, Some((1, record())));
        c.evict_changed([("prod/a", 1)]);
        assert!(c.get("prod/a", |_| Some(1)).is_none());
    }

    #[test]
    fn the_stream_does_not_evict_what_this_replica_refilled_after_its_own_write() {
        let c = LocalCache::new(Duration::from_secs(60), 10);
        let v = view(1);
        c.evict_written("prod/a", 7);
        let g = c.generation();
        c.fill("prod/a", g, &v, None);
        // The write's events (5..=7) come back through the stream: already covered.
        c.evict_changed([("prod/a", 5), ("prod/a", 6), ("prod/a", 7)]);
        assert!(c.get("prod/a", |_| None).is_some());
        // Another replica's later write evicts.
        c.evict_changed([("prod/a", 9)]);
        assert!(c.get("prod/a", |_| None).is_none());
        // And an unrelated path's event evicts that path only.
        c.fill("prod/b", c.generation(), &v, None);
        c.evict_changed([("prod/c", 10)]);
        assert!(c.get("prod/b", |_| None).is_some());
    }

    #[test]
    fn the_local_cache_is_bounded_and_expires() {
        let c = LocalCache::new(Duration::from_secs(60), 2);
        for p in ["a", "b", "c"] {
            c.fill(p, c.generation(), &view(1), None);
        }
        assert_eq!(c.entries.lock().unwrap().secrets.len(), 2);
        let c = LocalCache::new(Duration::ZERO, 2);
        c.fill("a", c.generation(), &view(1), None);
        assert!(c.get("a", |_| None).is_none());
    }

    #[test]
    fn sealed_records_round_trip_and_garbage_is_a_miss() {
        let r = SealedRecord {
            state: State::Deleted,
            key_version: 7,
            ciphertext: vec![1, 2, 3],
            wrapped_key: vec![9; 40],
        };
        assert_eq!(SealedRecord::decode(&r.encode()), Some(r));
        assert_eq!(SealedRecord::decode(&[]), None);
        assert_eq!(
            SealedRecord::decode(&[1, 0, 0, 0, 1, 255, 255, 255, 255]),
            None
        );
        assert_eq!(SealedRecord::decode(&[9, 0, 0, 0, 1, 0, 0, 0, 0]), None);
    }
}
