//! Database snapshots (ADR 8): key-service's and vault-service's databases dumped while they
//! serve, loaded into fresh databases — on the same dialect and across dialects — and the
//! services started on the copies serve every secret version, label and credential again with
//! the same master; a snapshot never loads over data, nor into another schema version.
#![allow(clippy::unwrap_used)]

use sentia_db::snapshot::{self, SnapshotError};
use sentia_proto::vault::v1 as pb;
use sentia_testkit::{Backend, Stack, database, get_label, get_version, keys};

/// The lines of a snapshot, each table's rows sorted (rows come in primary-key order, but a
/// table whose first column repeats may list equal-first-column rows in any order).
fn canonical(snapshot: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = snapshot
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8(l.to_vec()).unwrap())
        .collect();
    let mut start = 0;
    for i in 0..lines.len() {
        if lines[i].starts_with("{\"") {
            lines[start..i].sort();
            start = i + 1;
        }
    }
    lines
}

async fn dump(url: &str, migrations: sentia_db::Migrations) -> (Vec<u8>, snapshot::Counts) {
    let pool = sentia_db::connect(url, 2, migrations).await.unwrap();
    let mut out = Vec::new();
    let counts = snapshot::dump(&pool, sentia_db::is_sqlite(url), |batch| {
        out.extend_from_slice(&batch);
        async { true }
    })
    .await
    .unwrap();
    pool.close().await;
    (out, counts)
}

async fn load(
    url: &str,
    migrations: sentia_db::Migrations,
    snapshot: &[u8],
) -> Result<snapshot::Counts, SnapshotError> {
    load_into(url, migrations, snapshot, snapshot::Target::Empty).await
}

async fn load_into(
    url: &str,
    migrations: sentia_db::Migrations,
    snapshot: &[u8],
    target: snapshot::Target,
) -> Result<snapshot::Counts, SnapshotError> {
    let pool = sentia_db::connect(url, 2, migrations).await.unwrap();
    let r = snapshot::load(
        &pool,
        sentia_db::is_sqlite(url),
        migrations.seeded,
        snapshot,
        target,
    )
    .await;
    pool.close().await;
    r
}

/// A stack with a few versions, a label, a destroyed version and an app credential.
async fn populated(backend: Backend, master: &str) -> Option<(Stack, String, String)> {
    let keys_db = database(backend).await?;
    let vault_db = database(backend).await?;
    let keys = keys::Running::start(&keys_db, &[("SENTIA_MASTER_KEY", master)]).await;
    let s = Stack::start_vault(keys, vault_db, &[]).await;
    for v in [b"v1".as_slice(), b"v2", b"v3"] {
        s.put("prod/app/db", v).await;
    }
    s.put("dev/app/other", b"x").await;
    let mut c = s.secrets(&s.root_token).await;
    c.move_label(pb::MoveLabelRequest {
        path: "prod/app/db".into(),
        label: "STABLE".into(),
        version: 1,
    })
    .await
    .unwrap();
    c.destroy_secret_versions(pb::DestroySecretVersionsRequest {
        path: "prod/app/db".into(),
        versions: vec![2],
    })
    .await
    .unwrap();
    let cred = s.credential("restored-app", &["developer"]).await;
    Some((s, keys_db, cred.role_id))
}

async fn round_trip(from: Backend, to: Backend) {
    let master = sentia_crypto::MasterKey::generate().to_base64().to_string();
    let Some((s, keys_db, role_id)) = populated(from, &master).await else {
        return;
    };
    let (keys_snapshot, key_counts) = dump(&keys_db, key_service::store::MIGRATIONS).await;
    let (vault_snapshot, vault_counts) =
        dump(&s.database_url, vault_service::store::MIGRATIONS).await;
    assert!(
        vault_counts.rows["secret_versions"] >= 4,
        "{vault_counts:?}"
    );
    assert!(key_counts.rows.values().sum::<u64>() > 0, "{key_counts:?}");
    let dumped = format!("{}", String::from_utf8_lossy(&vault_snapshot));
    assert!(
        !dumped.contains("\"v1\"") && !dumped.contains("djE="),
        "a value in clear"
    );
    let root = s.root_token.clone();
    s.stop().await;

    let Some(keys_copy) = database(to).await else {
        return;
    };
    let vault_copy = database(to).await.unwrap();
    let loaded = load(&keys_copy, key_service::store::MIGRATIONS, &keys_snapshot)
        .await
        .unwrap();
    assert_eq!(loaded.rows, key_counts.rows);
    let loaded = load(
        &vault_copy,
        vault_service::store::MIGRATIONS,
        &vault_snapshot,
    )
    .await
    .unwrap();
    for (table, n) in &vault_counts.rows {
        assert_eq!(loaded.rows.get(table).copied().unwrap_or(0), *n, "{table}");
    }
    // The copies dump to the same rows (the first and last lines name the dialect and count
    // tables; Postgres has the one table SQLite does not, ADR 2).
    let (again, _) = dump(&vault_copy, vault_service::store::MIGRATIONS).await;
    let strip = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| {
                !l.contains("unsequenced_events")
                    && !l.starts_with("{\"dialect\"")
                    && !l.starts_with("{\"tables\"")
            })
            .collect()
    };
    assert_eq!(
        strip(canonical(&again)),
        strip(canonical(&vault_snapshot)),
        "vault rows survive the round trip"
    );

    // Services on the copies, with the same master, serve what was there.
    let keys = keys::Running::start(&keys_copy, &[("SENTIA_MASTER_KEY", master.as_str())]).await;
    let restored = Stack::start_vault(keys, vault_copy.clone(), &[]).await;
    let mut c = restored.secrets(&root).await;
    let got = |r: Result<tonic::Response<pb::GetSecretResponse>, tonic::Status>| {
        r.map(|r| r.into_inner().value)
    };
    assert_eq!(
        got(c.get_secret(get_version("prod/app/db", 3)).await).unwrap(),
        b"v3"
    );
    assert_eq!(
        got(c.get_secret(get_label("prod/app/db", "STABLE")).await).unwrap(),
        b"v1"
    );
    assert_eq!(
        c.get_secret(get_version("prod/app/db", 2))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::FailedPrecondition,
        "a destroyed version stays destroyed"
    );
    let listed = restored
        .auth(&root)
        .await
        .list_app_credentials(pb::ListAppCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.credentials.iter().any(|c| c.role_id == role_id));
    // A restored database is not empty any more: loading again is refused, nothing written.
    let err = load(
        &vault_copy,
        vault_service::store::MIGRATIONS,
        &vault_snapshot,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SnapshotError::NotEmpty(_)), "{err}");
    restored.stop().await;
    // Replacing what is there instead is one transaction: the same rows again.
    let replaced = load_into(
        &vault_copy,
        vault_service::store::MIGRATIONS,
        &vault_snapshot,
        snapshot::Target::Replace,
    )
    .await
    .unwrap();
    assert_eq!(replaced.rows, loaded.rows);
    let (third, _) = dump(&vault_copy, vault_service::store::MIGRATIONS).await;
    assert_eq!(strip(canonical(&third)), strip(canonical(&again)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_snapshot_restores_into_sqlite() {
    round_trip(Backend::Sqlite, Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_snapshot_restores_into_postgres() {
    round_trip(Backend::Postgres, Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_snapshot_restores_into_postgres_and_back() {
    round_trip(Backend::Sqlite, Backend::Postgres).await;
    round_trip(Backend::Postgres, Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_another_schema_version_or_cut_short_is_refused() {
    let url = sentia_testkit::sqlite_url();
    let (snap, _) = dump(&url, key_service::store::MIGRATIONS).await;
    let text = String::from_utf8(snap.clone()).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    let newer = first.replace("\"schema_version\":", "\"schema_version\":9");
    let err = load(
        &sentia_testkit::sqlite_url(),
        key_service::store::MIGRATIONS,
        format!("{newer}\n{rest}").as_bytes(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("schema version"), "{err}");
    let cut = &snap[..snap.len() - 20];
    let err = load(
        &sentia_testkit::sqlite_url(),
        key_service::store::MIGRATIONS,
        cut,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SnapshotError::Mismatch(_)), "{err}");
}

/// More rows than one multi-row INSERT takes (and a NULL among them) load intact, on both
/// dialects, in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_larger_than_one_insert_round_trips() {
    for (from, to) in [
        (Backend::Sqlite, Backend::Postgres),
        (Backend::Postgres, Backend::Sqlite),
    ] {
        let (Some(source), Some(copy)) = (database(from).await, database(to).await) else {
            return;
        };
        let pool = sentia_db::connect(&source, 2, key_service::store::MIGRATIONS)
            .await
            .unwrap();
        let mut tx = pool.begin().await.unwrap();
        for i in 0..2_500i64 {
            sqlx::query(
                "INSERT INTO keys (name, purpose, primary_version, min_decryption_version, \
                 auto_rotate_secs, created_at, updated_at) VALUES ($1, 'encryption', 1, 1, $2, $3, $3)",
            )
            .bind(format!("k{i:05}"))
            .bind(if i % 7 == 0 { None } else { Some(i) })
            .bind(i)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        pool.close().await;
        let (snap, counts) = dump(&source, key_service::store::MIGRATIONS).await;
        assert_eq!(counts.rows["keys"], 2_500);
        let loaded = load(&copy, key_service::store::MIGRATIONS, &snap)
            .await
            .unwrap();
        assert_eq!(loaded.rows, counts.rows);
        let (again, _) = dump(&copy, key_service::store::MIGRATIONS).await;
        let rows = |s: &[u8]| -> Vec<String> {
            canonical(s)
                .into_iter()
                .filter(|l| l.starts_with('['))
                .collect()
        };
        assert_eq!(rows(&again), rows(&snap), "{from:?} -> {to:?}");
    }
}
