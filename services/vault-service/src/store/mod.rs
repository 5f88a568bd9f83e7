//! Secret persistence (sqlx `Any`: Postgres or SQLite with the same queries); the change
//! stream's tables are in `stream`, credentials and tokens in `credentials`. Every change is
//! one transaction: metadata, version row, labels, idempotency record and change-stream event
//! commit together or not at all. Only ciphertext and wrapped data keys are stored.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sentia_db::{MigrationSource, Migrations};
use sentia_proto::wkt::now_ms;
use sentia_runtime::audit::Call;
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};

mod credentials;
mod stream;

pub use credentials::CredentialRow;
use stream::Pending;
pub use stream::{Event, EventKind};

use crate::VaultError;
use crate::model::{CURRENT, Metadata, PENDING, PREVIOUS, SecretPath, Selector};
use crate::sequencer::Sequencer;

/// This service's migrations for each dialect (the schema-parity test compares what they make).
pub const MIGRATIONS: Migrations = Migrations {
    postgres: PG_MIGRATIONS,
    sqlite: SQLITE_MIGRATIONS,
    seeded: &["stream_head"],
};

const PG_MIGRATIONS: &[MigrationSource] = &[
    (
        1,
        "secrets",
        include_str!("../../migrations/postgres/0001_secrets.sql"),
    ),
    (
        2,
        "credential lifecycle",
        include_str!("../../migrations/postgres/0002_credential_lifecycle.sql"),
    ),
    (
        3,
        "path order index",
        include_str!("../../migrations/postgres/0003_path_order_index.sql"),
    ),
    (
        4,
        "events sequenced after commit",
        include_str!("../../migrations/postgres/0004_unsequenced_events.sql"),
    ),
    (
        5,
        "rewrap index",
        include_str!("../../migrations/postgres/0005_rewrap_index.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[MigrationSource] = &[
    (
        1,
        "secrets",
        include_str!("../../migrations/sqlite/0001_secrets.sql"),
    ),
    (
        2,
        "credential lifecycle",
        include_str!("../../migrations/sqlite/0002_credential_lifecycle.sql"),
    ),
    (
        3,
        "rewrap index",
        include_str!("../../migrations/sqlite/0003_rewrap_index.sql"),
    ),
];

/// Lifecycle state of a version, as stored (values match `VersionState` in vault.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Readable.
    Enabled = 1,
    /// Soft-deleted.
    Deleted = 2,
    /// Data key erased.
    Destroyed = 3,
}

impl State {
    fn from_i64(v: i64) -> Result<Self, VaultError> {
        match v {
            1 => Ok(Self::Enabled),
            2 => Ok(Self::Deleted),
            3 => Ok(Self::Destroyed),
            _ => Err(VaultError::DataLoss(format!("a version row (state {v})"))),
        }
    }
}

/// One secret's metadata row and labels.
#[derive(Debug, Clone)]
pub struct SecretRow {
    /// Path.
    pub path: String,
    /// Metadata.
    pub meta: Metadata,
    /// Latest version number.
    pub current_version: u64,
    /// Increases on every change; guards the Redis cache against stale fills.
    pub revision: i64,
    /// Creation time (ms).
    pub create_time: i64,
    /// Last change (ms).
    pub update_time: i64,
    /// Label -> version.
    pub labels: BTreeMap<String, u64>,
}

/// One version's row.
#[derive(Debug, Clone)]
pub struct VersionRow {
    /// Version number.
    pub version: u64,
    /// State.
    pub state: State,
    /// Sealed value (None once destroyed).
    pub ciphertext: Option<Vec<u8>>,
    /// Wrapped data key (None once destroyed).
    pub wrapped_key: Option<Vec<u8>>,
    /// key-service key version of the wrap.
    pub key_version: u32,
    /// Writer.
    pub created_by: String,
    /// When written (ms).
    pub create_time: i64,
}

/// A stored data key as the rewrap reads it.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    /// Secret path.
    pub path: String,
    /// Secret version.
    pub version: u64,
    /// key-service key version wrapping it.
    pub key_version: u32,
    /// The wrapped data key.
    pub wrapped_key: Vec<u8>,
}

/// The result of [`Store::read`].
#[derive(Debug, Clone)]
pub struct ReadRow {
    /// The secret's content type.
    pub content_type: String,
    /// The secret's revision at the read.
    pub revision: i64,
    /// The selected version.
    pub version: VersionRow,
    /// Every label of the secret -> version.
    pub labels: BTreeMap<String, u64>,
    /// The secret's tier.
    pub tier: i32,
    /// When the secret expires (Unix ms).
    pub expire_time: Option<i64>,
}

/// A version to write, sealed by the caller.
#[derive(Debug)]
pub struct NewVersion {
    /// Path.
    pub path: SecretPath,
    /// The number it gets: current + 1 as the caller observed it.
    pub version: u64,
    /// Sealed value.
    pub ciphertext: Vec<u8>,
    /// Wrapped data key.
    pub wrapped_key: Vec<u8>,
    /// Wrapping key version.
    pub key_version: u32,
    /// Writer.
    pub created_by: String,
    /// Labels to point at it.
    pub labels: Vec<String>,
    /// Idempotency key, if the caller sent one.
    pub request_id: Option<String>,
    /// The secret's metadata after this write.
    pub meta: Metadata,
}

/// Result of a committed change: what to tell watchers and which cache entries to drop.
#[derive(Debug, Default)]
pub struct Committed {
    /// Highest event sequence written.
    pub sequence: u64,
    /// New revision of the secret.
    pub revision: i64,
    /// Versions whose stored record changed (state or destroyed).
    pub touched_versions: Vec<u64>,
    /// Time of the change (ms).
    pub time: i64,
}

/// Database access for vault-service.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// SQLite compares text bytewise; Postgres needs `COLLATE "C"` for the same order
    /// (a locale collation such as en_US ignores '/' and would break prefix ranges).
    sqlite: bool,
    /// Postgres: numbers change-stream events after their writes commit (ADR 2). `None` on
    /// SQLite, where each write numbers its own events.
    sequencer: Option<Arc<Sequencer>>,
}

fn u64_of(row: &AnyRow, col: &str) -> Result<u64, VaultError> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| VaultError::DataLoss(format!("column {col}")))
}

fn i64_of(v: u64) -> Result<i64, VaultError> {
    i64::try_from(v).map_err(|_| VaultError::Invalid(format!("version {v} is out of range")))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn secret_from(row: &AnyRow) -> Result<SecretRow, VaultError> {
    let tags: String = row.try_get("tags")?;
    Ok(SecretRow {
        path: row.try_get("path")?,
        meta: Metadata {
            tier: row.try_get::<i64, _>("tier")? as i32,
            owner: row.try_get("owner")?,
            description: row.try_get("description")?,
            content_type: row.try_get("content_type")?,
            tags: serde_json::from_str(&tags).map_err(|_| VaultError::DataLoss("tags".into()))?,
            max_versions: row.try_get::<i64, _>("max_versions")? as u32,
            expire_time: row.try_get("expire_time")?,
            rotate_by_time: row.try_get("rotate_by_time")?,
        },
        current_version: u64_of(row, "current_version")?,
        revision: row.try_get("revision")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
        labels: BTreeMap::new(),
    })
}

fn version_from(row: &AnyRow) -> Result<VersionRow, VaultError> {
    Ok(VersionRow {
        version: u64_of(row, "version")?,
        state: State::from_i64(row.try_get("state")?)?,
        ciphertext: row.try_get("ciphertext")?,
        wrapped_key: row.try_get("wrapped_key")?,
        key_version: row.try_get::<i64, _>("key_version")? as u32,
        created_by: row.try_get("created_by")?,
        create_time: row.try_get("create_time")?,
    })
}

const SECRET_COLUMNS: &str = "path, tier, owner, description, content_type, tags, max_versions, \
     expire_time, rotate_by_time, current_version, revision, create_time, update_time";

impl Store {
    /// Connects and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, VaultError> {
        let pool = sentia_db::connect(url, max_connections, MIGRATIONS).await?;
        if sentia_db::is_sqlite(url) {
            // Destroyed ciphertext is overwritten on disk, not just unlinked from the b-tree.
            sqlx::query("PRAGMA secure_delete=ON")
                .execute(&pool)
                .await?;
        }
        let sqlite = sentia_db::is_sqlite(url);
        Ok(Self {
            pool,
            sqlite,
            sequencer: (!sqlite).then(|| Arc::new(Sequencer::default())),
        })
    }

    /// The sequencer that numbers this store's change-stream events after commit (Postgres);
    /// `None` on SQLite, where each write numbers its own.
    pub fn sequencer(&self) -> Option<Arc<Sequencer>> {
        self.sequencer.clone()
    }

    /// The pool, for tests that inspect raw rows.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A secret's metadata and labels.
    pub async fn secret(&self, path: &str) -> Result<Option<SecretRow>, VaultError> {
        let Some(mut s) = self.secret_without_labels(path).await? else {
            return Ok(None);
        };
        s.labels = self.labels(path).await?;
        Ok(Some(s))
    }

    /// A secret's metadata with `labels` left empty: what a write needs (one query fewer).
    pub async fn secret_without_labels(&self, path: &str) -> Result<Option<SecretRow>, VaultError> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {SECRET_COLUMNS} FROM secrets WHERE path = $1"
        ));
        sqlx::query(sql)
            .bind(path)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| secret_from(&row))
            .transpose()
    }

    async fn labels(&self, path: &str) -> Result<BTreeMap<String, u64>, VaultError> {
        let rows = sqlx::query("SELECT label, version FROM secret_labels WHERE path = $1")
            .bind(path)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("label")?, u64_of(r, "version")?)))
            .collect()
    }

    /// Everything one read needs, in one round trip: the version selected by `label` or
    /// `version`, and the secret's content type, revision and labels.
    /// `None` when the secret, label or version does not exist.
    pub async fn read(
        &self,
        path: &str,
        selector: &Selector,
    ) -> Result<Option<ReadRow>, VaultError> {
        const COLUMNS: &str = "v.version, v.state, v.ciphertext, v.wrapped_key, v.key_version, \
             v.created_by, v.create_time, s.content_type, s.revision, s.tier, s.expire_time, \
             o.label AS label, \
             o.version AS label_version";
        let rows = match selector {
            Selector::Label(label) => {
                let sql = sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM secret_labels l \
                     JOIN secret_versions v ON v.path = l.path AND v.version = l.version \
                     JOIN secrets s ON s.path = l.path \
                     LEFT JOIN secret_labels o ON o.path = v.path \
                     WHERE l.path = $1 AND l.label = $2"
                ));
                sqlx::query(sql)
                    .bind(path)
                    .bind(label.as_str())
                    .fetch_all(&self.pool)
                    .await?
            }
            Selector::Version(version) => {
                let sql = sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM secret_versions v \
                     JOIN secrets s ON s.path = v.path \
                     LEFT JOIN secret_labels o ON o.path = v.path \
                     WHERE v.path = $1 AND v.version = $2"
                ));
                sqlx::query(sql)
                    .bind(path)
                    .bind(i64_of(*version)?)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut labels = BTreeMap::new();
        for r in &rows {
            if let Some(l) = r.try_get::<Option<String>, _>("label")? {
                labels.insert(l, u64_of(r, "label_version")?);
            }
        }
        Ok(Some(ReadRow {
            content_type: first.try_get("content_type")?,
            revision: first.try_get("revision")?,
            version: version_from(first)?,
            labels,
            tier: first.try_get::<i64, _>("tier")? as i32,
            expire_time: first.try_get("expire_time")?,
        }))
    }

    /// Up to `limit` versions whose data key is wrapped under a key version below `primary`,
    /// in path order: the rewrap's next batch.
    pub async fn wrapped_below(
        &self,
        primary: u32,
        limit: usize,
    ) -> Result<Vec<WrappedKey>, VaultError> {
        let rows = sqlx::query(
            "SELECT path, version, key_version, wrapped_key FROM secret_versions \
             WHERE key_version < $1 AND wrapped_key IS NOT NULL ORDER BY path, version LIMIT $2",
        )
        .bind(i64::from(primary))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WrappedKey {
                    path: r.try_get("path")?,
                    version: u64_of(r, "version")?,
                    key_version: u32::try_from(u64_of(r, "key_version")?)
                        .map_err(|_| VaultError::DataLoss("column key_version".into()))?,
                    wrapped_key: r.try_get("wrapped_key")?,
                })
            })
            .collect()
    }

    /// Stores `old`'s data key re-wrapped under `key_version`, unless the row changed since
    /// it was read (destroyed, or re-wrapped by another replica): false then.
    pub async fn rewrapped(
        &self,
        old: &WrappedKey,
        wrapped_key: &[u8],
        key_version: u32,
    ) -> Result<bool, VaultError> {
        let done = sqlx::query(
            "UPDATE secret_versions SET wrapped_key = $1, key_version = $2 \
             WHERE path = $3 AND version = $4 AND key_version = $5 AND wrapped_key IS NOT NULL",
        )
        .bind(wrapped_key)
        .bind(i64::from(key_version))
        .bind(&old.path)
        .bind(i64_of(old.version)?)
        .bind(i64::from(old.key_version))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many stored data keys each key version wraps (destroyed versions hold none).
    pub async fn wrap_counts(&self) -> Result<BTreeMap<u32, u64>, VaultError> {
        let rows = sqlx::query(
            "SELECT key_version, COUNT(*) AS n FROM secret_versions \
             WHERE wrapped_key IS NOT NULL GROUP BY key_version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let v = u32::try_from(u64_of(r, "key_version")?)
                    .map_err(|_| VaultError::DataLoss("column key_version".into()))?;
                Ok((v, u64_of(r, "n")?))
            })
            .collect()
    }

    /// True if a secret exists at `path`.
    pub async fn exists(&self, path: &str) -> Result<bool, VaultError> {
        Ok(sqlx::query("SELECT 1 AS one FROM secrets WHERE path = $1")
            .bind(path)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// One version's row.
    pub async fn version(
        &self,
        path: &str,
        version: u64,
    ) -> Result<Option<VersionRow>, VaultError> {
        let row = sqlx::query(
            "SELECT version, state, ciphertext, wrapped_key, key_version, created_by, create_time \
             FROM secret_versions WHERE path = $1 AND version = $2",
        )
        .bind(path)
        .bind(i64_of(version)?)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from).transpose()
    }

    /// Every version of a secret, newest first.
    pub async fn versions(&self, path: &str) -> Result<Vec<VersionRow>, VaultError> {
        let rows = sqlx::query(
            "SELECT version, state, ciphertext, wrapped_key, key_version, created_by, create_time \
             FROM secret_versions WHERE path = $1 ORDER BY version DESC",
        )
        .bind(path)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from).collect()
    }

    /// Secrets whose path is under `prefix` ("" = all) and after `after`, in path order.
    pub async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<SecretRow>, VaultError> {
        // Byte order everywhere, whatever the database's collation.
        let c = if self.sqlite { "" } else { " COLLATE \"C\"" };
        // Each query is one range of the (bytewise) path index read in order, so a page costs
        // its own rows, not the whole prefix: the secret named `prefix` itself first (it sorts
        // before `prefix/…`), then `prefix/` <= path < `prefix0` ('0' follows '/' bytewise).
        let rows = if prefix.is_empty() {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT {SECRET_COLUMNS} FROM secrets WHERE path{c} > $1 ORDER BY path{c} LIMIT $2"
            ));
            sqlx::query(sql)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
        } else {
            let mut rows = Vec::new();
            if after < prefix {
                let sql = sqlx::AssertSqlSafe(format!(
                    "SELECT {SECRET_COLUMNS} FROM secrets WHERE path = $1"
                ));
                rows.extend(
                    sqlx::query(sql)
                        .bind(prefix)
                        .fetch_optional(&self.pool)
                        .await?,
                );
            }
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT {SECRET_COLUMNS} FROM secrets \
                 WHERE path{c} >= $1 AND path{c} < $2 AND path{c} > $3 \
                 ORDER BY path{c} LIMIT $4"
            ));
            rows.extend(
                sqlx::query(sql)
                    .bind(format!("{prefix}/"))
                    .bind(format!("{prefix}0"))
                    .bind(after)
                    .bind(limit - rows.len() as i64)
                    .fetch_all(&self.pool)
                    .await?,
            );
            rows
        };
        let mut out = rows
            .iter()
            .map(secret_from)
            .collect::<Result<Vec<_>, _>>()?;
        // Every listed secret's labels in one query, not one per row.
        if !out.is_empty() {
            // SQLite looks numbered parameters up by name (quadratic in their count);
            // anonymous ones bind in order.
            let marks: Vec<String> = (1..=out.len())
                .map(|i| {
                    if self.sqlite {
                        "?".into()
                    } else {
                        format!("${i}")
                    }
                })
                .collect();
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT path, label, version FROM secret_labels WHERE path IN ({})",
                marks.join(", ")
            ));
            let mut q = sqlx::query(sql);
            for s in &out {
                q = q.bind(s.path.clone());
            }
            let mut labels: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
            for r in q.fetch_all(&self.pool).await? {
                labels
                    .entry(r.try_get("path")?)
                    .or_default()
                    .insert(r.try_get("label")?, u64_of(&r, "version")?);
            }
            for s in &mut out {
                s.labels = labels.remove(&s.path).unwrap_or_default();
            }
        }
        Ok(out)
    }

    /// The first result of an earlier Put with this request id by this principal.
    pub async fn put_request(
        &self,
        principal: &str,
        request_id: &str,
    ) -> Result<Option<(String, u64, i64)>, VaultError> {
        let row = sqlx::query(
            "SELECT path, version, create_time FROM put_requests WHERE principal = $1 AND request_id = $2",
        )
        .bind(principal)
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok((
                r.try_get("path")?,
                u64_of(&r, "version")?,
                r.try_get("create_time")?,
            ))
        })
        .transpose()
    }

    /// Writes a new version. Fails with [`VaultError::Conflict`] if another writer got
    /// `nv.version` first (the caller re-reads and retries, or reports a CAS conflict).
    pub async fn put_version(
        &self,
        nv: &NewVersion,
        audit: Option<&Call<'_>>,
    ) -> Result<Committed, VaultError> {
        let now = now_ms();
        let path = nv.path.as_str();
        let version = i64_of(nv.version)?;
        let mut tx = self.pool.begin().await?;
        let tags = serde_json::to_string(&nv.meta.tags).unwrap_or_else(|_| "{}".into());
        let m = &nv.meta;
        let revision: i64 = if nv.version == 1 {
            let r = bind_metadata(sqlx::query(
                "INSERT INTO secrets (path, tier, owner, description, content_type, tags, max_versions, \
                 expire_time, rotate_by_time, current_version, revision, create_time, update_time) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, 1, $10, $10)").bind(path), m, &tags)
            .bind(now)
            .execute(&mut *tx)
            .await;
            match r {
                Ok(_) => 1,
                Err(e) if is_unique_violation(&e) => return Err(race(path)),
                Err(e) => return Err(e.into()),
            }
        } else {
            let row = bind_metadata(sqlx::query(
                "UPDATE secrets SET tier = $1, owner = $2, description = $3, content_type = $4, \
                 tags = $5, max_versions = $6, expire_time = $7, rotate_by_time = $8, \
                 current_version = $9, revision = revision + 1, update_time = $10 \
                 WHERE path = $11 AND current_version = $12 RETURNING revision"), m, &tags)
            .bind(version)
            .bind(now)
            .bind(path)
            .bind(version - 1)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(r) => r.try_get("revision")?,
                None => return Err(race(path)),
            }
        };
        sqlx::query(
            "INSERT INTO secret_versions (path, version, state, ciphertext, wrapped_key, key_version, \
             created_by, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(path)
        .bind(version)
        .bind(State::Enabled as i64)
        .bind(&nv.ciphertext)
        .bind(&nv.wrapped_key)
        .bind(i64::from(nv.key_version))
        .bind(&nv.created_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(id) = &nv.request_id {
            let r = sqlx::query(
                "INSERT INTO put_requests (principal, request_id, path, version, create_time) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&nv.created_by)
            .bind(id)
            .bind(path)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await;
            match r {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => return Err(race(path)),
                Err(e) => return Err(e.into()),
            }
        }
        let mut events = Pending::default();
        events.push(EventKind::VersionCreated, path, &[nv.version], "");
        for label in &nv.labels {
            move_label_tx(&mut tx, &mut events, path, label, nv.version).await?;
        }
        self.prune_and_commit(
            tx,
            events,
            path,
            nv.version,
            nv.meta.max_versions,
            revision,
            now,
            audit,
        )
        .await
    }

    /// Replaces a secret's metadata (pruning if max_versions shrank).
    pub async fn update_metadata(
        &self,
        path: &str,
        meta: &Metadata,
        audit: Option<&Call<'_>>,
    ) -> Result<Committed, VaultError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let tags = serde_json::to_string(&meta.tags).unwrap_or_else(|_| "{}".into());
        let row = bind_metadata(sqlx::query(
            "UPDATE secrets SET tier = $1, owner = $2, description = $3, content_type = $4, tags = $5, \
             max_versions = $6, expire_time = $7, rotate_by_time = $8, revision = revision + 1, \
             update_time = $9 WHERE path = $10 RETURNING revision, current_version"), meta, &tags)
        .bind(now)
        .bind(path)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found(path))?;
        let revision: i64 = row.try_get("revision")?;
        let current = u64_of(&row, "current_version")?;
        let mut events = Pending::default();
        events.push(EventKind::MetadataUpdated, path, &[], "");
        self.prune_and_commit(
            tx,
            events,
            path,
            current,
            meta.max_versions,
            revision,
            now,
            audit,
        )
        .await
    }

    /// Points `label` at `version` (which must be enabled). Moving CURRENT moves PREVIOUS to
    /// the old CURRENT, as AWS Secrets Manager does.
    pub async fn move_label(
        &self,
        path: &str,
        label: &str,
        version: u64,
        audit: Option<&Call<'_>>,
    ) -> Result<Committed, VaultError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let revision = bump(&mut tx, path, now).await?;
        let state =
            sqlx::query("SELECT state FROM secret_versions WHERE path = $1 AND version = $2")
                .bind(path)
                .bind(i64_of(version)?)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| VaultError::NotFound(format!("{path} has no version {version}")))?;
        match State::from_i64(state.try_get("state")?)? {
            State::Enabled => {}
            s => {
                return Err(VaultError::Precondition(format!(
                    "version {version} of {path} is {}; a label can only point at an enabled version",
                    state_name(s)
                )));
            }
        }
        let mut events = Pending::default();
        move_label_tx(&mut tx, &mut events, path, label, version).await?;
        let sequence = events.commit(self, tx, now, audit).await?;
        Ok(Committed {
            sequence,
            revision,
            touched_versions: vec![],
            time: now,
        })
    }

    /// Changes the state of versions (`[]` = every version in state `from`). Returns the
    /// versions changed. Destroying erases ciphertext and wrapped key and drops labels.
    pub async fn set_state(
        &self,
        path: &str,
        versions: &[u64],
        to: State,
        audit: Option<&Call<'_>>,
    ) -> Result<(Vec<u64>, Committed), VaultError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let revision = bump(&mut tx, path, now).await?;
        let rows = sqlx::query(
            "SELECT version, state FROM secret_versions WHERE path = $1 ORDER BY version",
        )
        .bind(path)
        .fetch_all(&mut *tx)
        .await?;
        let mut existing = BTreeMap::new();
        for r in &rows {
            existing.insert(u64_of(r, "version")?, State::from_i64(r.try_get("state")?)?);
        }
        let targets: Vec<u64> = if versions.is_empty() {
            existing
                .iter()
                .filter(|(_, s)| match to {
                    State::Deleted => **s == State::Enabled,
                    State::Enabled => **s == State::Deleted,
                    State::Destroyed => **s != State::Destroyed,
                })
                .map(|(v, _)| *v)
                .collect()
        } else {
            let mut t = Vec::new();
            for v in versions {
                let s = existing
                    .get(v)
                    .ok_or_else(|| VaultError::NotFound(format!("{path} has no version {v}")))?;
                match (to, s) {
                    (State::Destroyed, State::Destroyed) => {}
                    (State::Enabled | State::Deleted, State::Destroyed) => {
                        return Err(VaultError::Precondition(format!(
                            "version {v} of {path} is destroyed; it cannot be recovered"
                        )));
                    }
                    (x, y) if x == *y => {}
                    _ => t.push(*v),
                }
            }
            t.sort_unstable();
            t.dedup();
            t
        };
        for v in &targets {
            let sql = if to == State::Destroyed {
                "UPDATE secret_versions SET state = $1, ciphertext = NULL, wrapped_key = NULL \
                 WHERE path = $2 AND version = $3"
            } else {
                "UPDATE secret_versions SET state = $1 WHERE path = $2 AND version = $3"
            };
            sqlx::query(sql)
                .bind(to as i64)
                .bind(path)
                .bind(i64_of(*v)?)
                .execute(&mut *tx)
                .await?;
            if to == State::Destroyed {
                sqlx::query("DELETE FROM secret_labels WHERE path = $1 AND version = $2")
                    .bind(path)
                    .bind(i64_of(*v)?)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let kind = match to {
            State::Deleted => EventKind::Deleted,
            State::Enabled => EventKind::Undeleted,
            State::Destroyed => EventKind::Destroyed,
        };
        let mut events = Pending::default();
        if !targets.is_empty() {
            events.push(kind, path, &targets, "");
        }
        let sequence = events.commit(self, tx, now, audit).await?;
        Ok((
            targets.clone(),
            Committed {
                sequence,
                revision,
                touched_versions: targets,
                time: now,
            },
        ))
    }

    /// The end of a write that may leave versions beyond `max_versions`: prune them (with a
    /// Destroyed event), write the events, commit.
    #[allow(clippy::too_many_arguments)]
    async fn prune_and_commit(
        &self,
        mut tx: Transaction<'static, Any>,
        mut events: Pending,
        path: &str,
        current: u64,
        max_versions: u32,
        revision: i64,
        now: i64,
        audit: Option<&Call<'_>>,
    ) -> Result<Committed, VaultError> {
        let pruned = prune(&mut tx, path, current, max_versions).await?;
        if !pruned.is_empty() {
            events.push(EventKind::Destroyed, path, &pruned, "");
        }
        let sequence = events.commit(self, tx, now, audit).await?;
        Ok(Committed {
            sequence,
            revision,
            touched_versions: pruned,
            time: now,
        })
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>;

/// Binds the eight metadata columns, in the order every statement here lists them: tier,
/// owner, description, content_type, tags, max_versions, expire_time, rotate_by_time.
fn bind_metadata<'q>(q: AnyQuery<'q>, m: &'q Metadata, tags: &'q str) -> AnyQuery<'q> {
    q.bind(i64::from(m.tier))
        .bind(&m.owner)
        .bind(&m.description)
        .bind(&m.content_type)
        .bind(tags)
        .bind(i64::from(m.max_versions))
        .bind(m.expire_time)
        .bind(m.rotate_by_time)
}

fn race(path: &str) -> VaultError {
    VaultError::Conflict(format!(
        "{path} was changed by another writer at the same time; read it again and retry"
    ))
}

fn not_found(path: &str) -> VaultError {
    VaultError::NotFound(format!("no secret at {path}"))
}

/// Human name of a state.
pub fn state_name(s: State) -> &'static str {
    match s {
        State::Enabled => "enabled",
        State::Deleted => "deleted",
        State::Destroyed => "destroyed",
    }
}

async fn bump(tx: &mut Transaction<'static, Any>, path: &str, now: i64) -> Result<i64, VaultError> {
    let row = sqlx::query(
        "UPDATE secrets SET revision = revision + 1, update_time = $1 WHERE path = $2 RETURNING revision",
    )
    .bind(now)
    .bind(path)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| not_found(path))?;
    Ok(row.try_get("revision")?)
}

async fn move_label_tx(
    tx: &mut Transaction<'static, Any>,
    events: &mut Pending,
    path: &str,
    label: &str,
    version: u64,
) -> Result<(), VaultError> {
    if label == CURRENT {
        // CURRENT's old version becomes PREVIOUS, in one statement (the WHERE also keeps
        // SQLite from reading ON CONFLICT as a join constraint).
        let old = sqlx::query(
            "INSERT INTO secret_labels (path, label, version) \
             SELECT path, $1, version FROM secret_labels \
             WHERE path = $2 AND label = $3 AND version <> $4 \
             ON CONFLICT (path, label) DO UPDATE SET version = excluded.version \
             RETURNING version",
        )
        .bind(PREVIOUS)
        .bind(path)
        .bind(CURRENT)
        .bind(i64_of(version)?)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(old) = old {
            events.push(
                EventKind::LabelMoved,
                path,
                &[u64_of(&old, "version")?],
                PREVIOUS,
            );
        }
    }
    set_label(tx, path, label, version).await?;
    events.push(EventKind::LabelMoved, path, &[version], label);
    if label == CURRENT {
        // A version that becomes CURRENT is no longer staged: PENDING leaves it (an event
        // with no versions says the label was removed).
        let removed = sqlx::query(
            "DELETE FROM secret_labels WHERE path = $1 AND label = $2 AND version = $3",
        )
        .bind(path)
        .bind(PENDING)
        .bind(i64_of(version)?)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if removed > 0 {
            events.push(EventKind::LabelMoved, path, &[], PENDING);
        }
    }
    Ok(())
}

async fn set_label(
    tx: &mut Transaction<'static, Any>,
    path: &str,
    label: &str,
    version: u64,
) -> Result<(), VaultError> {
    sqlx::query(
        "INSERT INTO secret_labels (path, label, version) VALUES ($1, $2, $3) \
         ON CONFLICT (path, label) DO UPDATE SET version = excluded.version",
    )
    .bind(path)
    .bind(label)
    .bind(i64_of(version)?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Destroys versions more than `max_versions` behind `current` that no label points at
/// (like Vault KV's max_versions: the window counts version numbers). One statement.
async fn prune(
    tx: &mut Transaction<'static, Any>,
    path: &str,
    current: u64,
    max_versions: u32,
) -> Result<Vec<u64>, VaultError> {
    let Some(cutoff) = current
        .checked_sub(u64::from(max_versions))
        .filter(|c| *c > 0)
    else {
        return Ok(Vec::new());
    };
    let rows = sqlx::query(
        "UPDATE secret_versions SET state = $3, ciphertext = NULL, wrapped_key = NULL \
         WHERE path = $1 AND version <= $2 AND state <> $3 AND NOT EXISTS \
         (SELECT 1 FROM secret_labels l WHERE l.path = secret_versions.path AND l.version = secret_versions.version) \
         RETURNING version",
    )
    .bind(path)
    .bind(i64_of(cutoff)?)
    .bind(State::Destroyed as i64)
    .fetch_all(&mut **tx)
    .await?;
    let mut pruned = rows
        .iter()
        .map(|r| u64_of(r, "version"))
        .collect::<Result<Vec<_>, _>>()?;
    pruned.sort_unstable();
    Ok(pruned)
}
