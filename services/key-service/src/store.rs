//! Keyring persistence through sqlx's `Any` driver, so one set of runtime queries serves
//! Postgres (production) and SQLite (the embedded default). Only wrapped material is stored.

use sentia_db::{MigrationSource, Migrations};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::KeyError;

/// This service's migrations for each dialect (the schema-parity test compares what they make).
pub const MIGRATIONS: Migrations = Migrations {
    postgres: PG_MIGRATIONS,
    sqlite: SQLITE_MIGRATIONS,
    seeded: &[],
};

const PG_MIGRATIONS: &[MigrationSource] = &[
    (
        1,
        "keyring",
        include_str!("../migrations/postgres/0001_keyring.sql"),
    ),
    (
        2,
        "recovery_escrow",
        include_str!("../migrations/postgres/0002_recovery_escrow.sql"),
    ),
    (
        3,
        "master_created_at",
        include_str!("../migrations/postgres/0003_master_created_at.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[MigrationSource] = &[
    (
        1,
        "keyring",
        include_str!("../migrations/sqlite/0001_keyring.sql"),
    ),
    (
        2,
        "recovery_escrow",
        include_str!("../migrations/sqlite/0002_recovery_escrow.sql"),
    ),
    (
        3,
        "master_created_at",
        include_str!("../migrations/sqlite/0003_master_created_at.sql"),
    ),
];

/// The keyring's master metadata row.
#[derive(Debug, Clone)]
pub struct MetaRow {
    /// Version of the master key wrapping the keyring.
    pub master_version: u32,
    /// A fixed value sealed under the keyring key: proves a master key is the right one.
    pub check_blob: Vec<u8>,
    /// Seal type at initialization.
    pub seal_type: String,
    /// Shamir share count (0 outside Shamir mode).
    pub shamir_shares: u32,
    /// Shamir threshold (0 outside Shamir mode).
    pub shamir_threshold: u32,
    /// The master key of `master_version` escrowed to a recovery public key, if one is set.
    pub recovery: Option<Escrow>,
}

/// The master key sealed to an offline recovery key (see `sentia_crypto::escrow_master`).
#[derive(Clone)]
pub struct Escrow {
    /// The sealed master.
    pub blob: Vec<u8>,
    /// Fingerprint of the recovery public key it was sealed to.
    pub fingerprint: String,
}

impl std::fmt::Debug for Escrow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Escrow(recovery key fp:{})", self.fingerprint)
    }
}

/// A named key's metadata row.
#[derive(Debug, Clone)]
pub struct KeyRow {
    /// Name.
    pub name: String,
    /// Purpose name.
    pub purpose: String,
    /// Primary version.
    pub primary_version: u32,
    /// Lowest version accepted for decryption.
    pub min_decryption_version: u32,
    /// Auto-rotation period in seconds.
    pub auto_rotate_secs: Option<i64>,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
}

/// One key version's row.
#[derive(Debug, Clone)]
pub struct VersionRow {
    /// Version number.
    pub version: u32,
    /// Material wrapped under the keyring key.
    pub wrapped_material: Vec<u8>,
    /// Encryptions reserved so far (an upper bound of encryptions done).
    pub encryption_count: u64,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
}

/// Database access for key-service.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
}

pub use sentia_proto::wkt::now_ms;

fn u32_of(row: &AnyRow, col: &str) -> Result<u32, KeyError> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| KeyError::Corrupt(format!("column {col} out of range")))
}

impl Store {
    /// The pool, for the database's snapshot (backups).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Connects and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, KeyError> {
        let pool = sentia_db::connect(url, max_connections, MIGRATIONS).await?;
        Ok(Self { pool })
    }

    /// The master metadata, if the keyring was initialized.
    pub async fn meta(&self) -> Result<Option<MetaRow>, KeyError> {
        let row = sqlx::query(
            "SELECT master_version, check_blob, seal_type, shamir_shares, shamir_threshold, recovery_escrow, recovery_fingerprint FROM keyring_meta WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let blob: Option<Vec<u8>> = r.try_get("recovery_escrow")?;
            let fingerprint: Option<String> = r.try_get("recovery_fingerprint")?;
            Ok(MetaRow {
                recovery: blob
                    .zip(fingerprint)
                    .map(|(blob, fingerprint)| Escrow { blob, fingerprint }),
                master_version: u32_of(&r, "master_version")?,
                check_blob: r.try_get("check_blob")?,
                seal_type: r.try_get("seal_type")?,
                shamir_shares: u32_of(&r, "shamir_shares")?,
                shamir_threshold: u32_of(&r, "shamir_threshold")?,
            })
        })
        .transpose()
    }

    /// When the current master version was made (Unix ms), if the keyring was initialized.
    pub async fn master_created_at(&self) -> Result<Option<i64>, KeyError> {
        let row = sqlx::query("SELECT master_created_at FROM keyring_meta WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("master_created_at"))
            .transpose()?)
    }

    /// Creates the master metadata row; fails if one exists (another replica won the race).
    pub async fn init_meta(&self, meta: &MetaRow) -> Result<(), KeyError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO keyring_meta (id, master_version, check_blob, seal_type, shamir_shares, shamir_threshold, created_at, updated_at, recovery_escrow, recovery_fingerprint, master_created_at) \
             VALUES (1, $1, $2, $3, $4, $5, $6, $6, $7, $8, $6)",
        )
        .bind(meta.master_version as i64)
        .bind(meta.check_blob.clone())
        .bind(meta.seal_type.clone())
        .bind(meta.shamir_shares as i64)
        .bind(meta.shamir_threshold as i64)
        .bind(now)
        .bind(meta.recovery.as_ref().map(|e| e.blob.clone()))
        .bind(meta.recovery.as_ref().map(|e| e.fingerprint.clone()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every key's metadata, by name.
    pub async fn keys(&self) -> Result<Vec<KeyRow>, KeyError> {
        let rows = sqlx::query(
            "SELECT name, purpose, primary_version, min_decryption_version, auto_rotate_secs, created_at FROM keys ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_row).collect()
    }

    /// One key's metadata.
    pub async fn key(&self, name: &str) -> Result<Option<KeyRow>, KeyError> {
        let row = sqlx::query(
            "SELECT name, purpose, primary_version, min_decryption_version, auto_rotate_secs, created_at FROM keys WHERE name = $1",
        )
        .bind(name.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_row).transpose()
    }

    /// One key's versions, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionRow>, KeyError> {
        let rows = sqlx::query(
            "SELECT version, wrapped_material, encryption_count, created_at FROM key_versions WHERE key_name = $1 ORDER BY version",
        )
        .bind(name.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let count: i64 = r.try_get("encryption_count")?;
                Ok(VersionRow {
                    version: u32_of(r, "version")?,
                    wrapped_material: r.try_get("wrapped_material")?,
                    encryption_count: count.max(0) as u64,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Creates a key with version 1, atomically. ALREADY_EXISTS if the name is taken.
    pub async fn create_key(&self, key: &KeyRow, wrapped: Vec<u8>) -> Result<(), KeyError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO keys (name, purpose, primary_version, min_decryption_version, auto_rotate_secs, created_at, updated_at) \
             VALUES ($1, $2, 1, 1, $3, $4, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(key.name.clone())
        .bind(key.purpose.clone())
        .bind(key.auto_rotate_secs)
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(KeyError::AlreadyExists(format!(
                "key {:?} already exists",
                key.name
            )));
        }
        sqlx::query(
            "INSERT INTO key_versions (key_name, version, wrapped_material, encryption_count, created_at) VALUES ($1, 1, $2, 0, $3)",
        )
        .bind(key.name.clone())
        .bind(wrapped)
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds version `new_version` and makes it primary, only if the primary is still
    /// `new_version - 1` (so two replicas never both rotate). Returns false if it lost the race.
    pub async fn add_version(
        &self,
        name: &str,
        new_version: u32,
        wrapped: Vec<u8>,
    ) -> Result<bool, KeyError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE keys SET primary_version = $1, updated_at = $2 WHERE name = $3 AND primary_version = $4",
        )
        .bind(new_version as i64)
        .bind(now)
        .bind(name.to_string())
        .bind(new_version as i64 - 1)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO key_versions (key_name, version, wrapped_material, encryption_count, created_at) VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(name.to_string())
        .bind(new_version as i64)
        .bind(wrapped)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Adds version `new_version` without making it primary, only while the primary is still
    /// `new_version - 1`. Returns false if it lost a race (or the version already exists).
    pub async fn add_staged_version(
        &self,
        name: &str,
        new_version: u32,
        wrapped: Vec<u8>,
    ) -> Result<bool, KeyError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // Touching the row takes its write lock: a concurrent rotation waits or loses.
        let current =
            sqlx::query("UPDATE keys SET updated_at = $1 WHERE name = $2 AND primary_version = $3")
                .bind(now)
                .bind(name.to_string())
                .bind(new_version as i64 - 1)
                .execute(&mut *tx)
                .await?;
        if current.rows_affected() == 0 {
            return Ok(false);
        }
        let added = sqlx::query(
            "INSERT INTO key_versions (key_name, version, wrapped_material, encryption_count, created_at) \
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT DO NOTHING",
        )
        .bind(name.to_string())
        .bind(new_version as i64)
        .bind(wrapped)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(added.rows_affected() == 1)
    }

    /// Makes the staged `version` primary if the primary is still `version - 1`.
    pub async fn promote(&self, name: &str, version: u32) -> Result<bool, KeyError> {
        let moved = sqlx::query(
            "UPDATE keys SET primary_version = $1, updated_at = $2 WHERE name = $3 AND primary_version = $4",
        )
        .bind(version as i64)
        .bind(now_ms())
        .bind(name.to_string())
        .bind(version as i64 - 1)
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Updates policy fields.
    pub async fn set_policy(
        &self,
        name: &str,
        min_decryption_version: u32,
        auto_rotate_secs: Option<i64>,
    ) -> Result<(), KeyError> {
        sqlx::query("UPDATE keys SET min_decryption_version = $1, auto_rotate_secs = $2, updated_at = $3 WHERE name = $4")
            .bind(min_decryption_version as i64)
            .bind(auto_rotate_secs)
            .bind(now_ms())
            .bind(name.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Reserves `block` more encryptions for a version; returns the new total reserved.
    pub async fn reserve_encryptions(
        &self,
        name: &str,
        version: u32,
        block: u64,
    ) -> Result<u64, KeyError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE key_versions SET encryption_count = encryption_count + $1 WHERE key_name = $2 AND version = $3")
            .bind(block as i64)
            .bind(name.to_string())
            .bind(version as i64)
            .execute(&mut *tx)
            .await?;
        let total: i64 = sqlx::query(
            "SELECT encryption_count FROM key_versions WHERE key_name = $1 AND version = $2",
        )
        .bind(name.to_string())
        .bind(version as i64)
        .fetch_one(&mut *tx)
        .await?
        .try_get("encryption_count")?;
        tx.commit().await?;
        Ok(total.max(0) as u64)
    }
}

fn key_row(r: &AnyRow) -> Result<KeyRow, KeyError> {
    Ok(KeyRow {
        name: r.try_get("name")?,
        purpose: r.try_get("purpose")?,
        primary_version: u32_of(r, "primary_version")?,
        min_decryption_version: u32_of(r, "min_decryption_version")?,
        auto_rotate_secs: r.try_get("auto_rotate_secs")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Store {
    /// Every version of every key: (key name, version, wrapped material).
    pub async fn all_wrapped(&self) -> Result<Vec<(String, u32, Vec<u8>)>, KeyError> {
        let rows = sqlx::query("SELECT key_name, version, wrapped_material FROM key_versions")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("key_name")?,
                    u32_of(r, "version")?,
                    r.try_get("wrapped_material")?,
                ))
            })
            .collect()
    }

    /// Stores the escrow of the master of `master_version`; false (nothing written) if the
    /// master was rotated meanwhile.
    pub async fn set_escrow(&self, master_version: u32, escrow: &Escrow) -> Result<bool, KeyError> {
        let updated = sqlx::query(
            "UPDATE keyring_meta SET recovery_escrow = $1, recovery_fingerprint = $2, updated_at = $3 \
             WHERE id = 1 AND master_version = $4",
        )
        .bind(escrow.blob.clone())
        .bind(escrow.fingerprint.clone())
        .bind(now_ms())
        .bind(master_version as i64)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Replaces the keyring's wrapping in one transaction: new master metadata and every
    /// version's material re-wrapped. Fails (changing nothing) if `old_version` is stale.
    pub async fn rewrap_keyring(
        &self,
        old_version: u32,
        meta: &MetaRow,
        rewrapped: Vec<(String, u32, Vec<u8>)>,
    ) -> Result<(), KeyError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE keyring_meta SET master_version = $1, check_blob = $2, shamir_shares = $3, shamir_threshold = $4, updated_at = $5, \
             master_created_at = $5, recovery_escrow = $7, recovery_fingerprint = $8 WHERE id = 1 AND master_version = $6",
        )
        .bind(meta.master_version as i64)
        .bind(meta.check_blob.clone())
        .bind(meta.shamir_shares as i64)
        .bind(meta.shamir_threshold as i64)
        .bind(now_ms())
        .bind(old_version as i64)
        .bind(meta.recovery.as_ref().map(|e| e.blob.clone()))
        .bind(meta.recovery.as_ref().map(|e| e.fingerprint.clone()))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(KeyError::FailedPrecondition(
                "the master key was rotated concurrently; retry".into(),
            ));
        }
        for (name, version, wrapped) in rewrapped {
            sqlx::query("UPDATE key_versions SET wrapped_material = $1 WHERE key_name = $2 AND version = $3")
                .bind(wrapped)
                .bind(name)
                .bind(version as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
