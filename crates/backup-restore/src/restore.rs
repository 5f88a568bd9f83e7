//! Restoring a checked archive into the four databases, then checking what was written.

use std::collections::BTreeMap;

use sentia_db::Migrations;
use sentia_db::snapshot::{self, Target};

use sentia_backup_ops::{
    BackupError, Progress, Quiet, SERVICES, Verified, check_versions, manifest,
};

/// The database URL of each service to restore into (`SENTIA_DATABASE_URL` of each).
pub struct Targets {
    /// key-service's.
    pub keys: String,
    /// vault-service's.
    pub vault: String,
    /// audit-service's.
    pub audit: String,
    /// rotation-scheduler's.
    pub scheduler: String,
}

impl Targets {
    fn of(&self, service: &str) -> (&str, Migrations) {
        match service {
            "key-service" => (&self.keys, key_service::store::MIGRATIONS),
            "vault-service" => (&self.vault, vault_service::store::MIGRATIONS),
            "audit-service" => (&self.audit, audit_service::store::MIGRATIONS),
            _ => (&self.scheduler, rotation_scheduler::store::MIGRATIONS),
        }
    }
}

/// What a restore wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Rows per service.
    pub rows: BTreeMap<String, u64>,
    /// Secret versions read back from the restored database and matched to the manifest.
    pub versions_checked: usize,
}

/// Loads `archive` into `targets` (migrating each database first). Every database is checked
/// before any is written: its schema must be the archive's (on the same dialect) and, unless
/// `replace`, it must hold no data. Each load is one transaction; afterwards vault-service's
/// database is read back and every secret version matched to the manifest's digest.
pub async fn restore(
    archive: &Verified,
    targets: &Targets,
    replace: bool,
) -> Result<Restored, BackupError> {
    restore_with(archive, targets, replace, &Quiet).await
}

/// [`restore`], reporting the rows each database took to `progress`.
pub async fn restore_with(
    archive: &Verified,
    targets: &Targets,
    replace: bool,
    progress: &dyn Progress,
) -> Result<Restored, BackupError> {
    let mut pools = Vec::new();
    for service in SERVICES {
        let (url, migrations) = targets.of(service);
        let sqlite = sentia_db::is_sqlite(url);
        let pool = sentia_db::connect(url, 2, migrations)
            .await
            .map_err(|e| BackupError::Refused(format!("{service}'s database: {e}")))?;
        let (schema_version, occupied) = snapshot::occupancy(&pool, sqlite, migrations.seeded)
            .await
            .map_err(BackupError::snapshot(service))?;
        let listed = &archive.manifest.services[service];
        let dialect = if sqlite { "sqlite" } else { "postgres" };
        if listed.dialect == dialect && listed.schema_version != schema_version {
            return Err(BackupError::Refused(format!(
                "{service}'s database is at schema version {schema_version}, the backup at {}: \
                 restore with the release that made it ({}); nothing was written",
                listed.schema_version, archive.manifest.release
            )));
        }
        if let (Some(table), false) = (occupied, replace) {
            return Err(BackupError::Refused(format!(
                "{service}'s database is not empty (table {table} has rows): restore into empty \
                 databases, or replace what they hold with --force; nothing was written"
            )));
        }
        pools.push((service, pool, sqlite, migrations));
    }
    let target = if replace {
        Target::Replace
    } else {
        Target::Empty
    };
    let mut rows = BTreeMap::new();
    let mut done: Vec<&str> = Vec::new();
    for (service, pool, sqlite, migrations) in &pools {
        let listed: u64 = archive.manifest.services[*service].rows.values().sum();
        progress.stage(&format!("loading {service}"), Some(listed));
        let counts = snapshot::load(
            pool,
            *sqlite,
            migrations.seeded,
            &archive.snapshots[*service],
            target,
        )
        .await
        .map_err(|e| {
            BackupError::Refused(format!(
                "{service}: {e}; restored before it: {}",
                if done.is_empty() {
                    "none".to_string()
                } else {
                    done.join(", ")
                }
            ))
        })?;
        if counts.rows != archive.manifest.services[*service].rows {
            return Err(BackupError::Invalid(format!(
                "{service}: the restored database holds {:?}, the manifest says {:?}",
                counts.rows, archive.manifest.services[*service].rows
            )));
        }
        rows.insert(service.to_string(), counts.rows.values().sum());
        progress.advance(listed);
        done.push(service);
    }
    let (_, vault, sqlite, _) = &pools[SERVICES
        .iter()
        .position(|s| *s == "vault-service")
        .unwrap_or_default()];
    progress.stage("reading vault-service back", None);
    let mut again = Vec::new();
    snapshot::dump(vault, *sqlite, |batch| {
        again.extend_from_slice(&batch);
        async { true }
    })
    .await
    .map_err(BackupError::snapshot("vault-service"))?;
    let digests = manifest::read(&again)
        .map_err(BackupError::snapshot("vault-service"))?
        .versions;
    check_versions(&archive.manifest.secret_versions, &digests)?;
    for (_, pool, ..) in pools {
        pool.close().await;
    }
    Ok(Restored {
        rows,
        versions_checked: digests.len(),
    })
}
