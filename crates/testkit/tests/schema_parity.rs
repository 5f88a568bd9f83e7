//! Each service's SQLite and Postgres migrations build the same tables with the same columns
//! of the same type families: the two dialects are written by hand, and a column added to one
//! only would otherwise surface as a runtime error on the other.
#![allow(clippy::unwrap_used)]

use sentia_db::{Migrations, Schema};
use sentia_testkit::{postgres_url, sqlite_url};

/// Tables only one dialect has, on purpose.
const ONE_DIALECT_ONLY: &[(&str, &str)] = &[
    // Postgres numbers change-stream events through a sequencer fed by this table; SQLite's
    // single writer numbers them inline (ADR 2).
    ("vault-service", "unsequenced_events"),
];

async fn built(url: &str, migrations: Migrations) -> Schema {
    let pool = sentia_db::connect(url, 1, migrations).await.unwrap();
    let schema = sentia_db::schema(&pool, sentia_db::is_sqlite(url))
        .await
        .unwrap();
    // What a fresh database holds is what `seeded` says (a snapshot load relies on it).
    let mut filled = Vec::new();
    for table in schema.keys() {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM \"{table}\""
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        if rows > 0 {
            filled.push(table.as_str());
        }
    }
    assert_eq!(
        filled, migrations.seeded,
        "{url}: tables a fresh database fills"
    );
    pool.close().await;
    schema
}

#[tokio::test]
async fn every_service_builds_the_same_schema_on_sqlite_and_on_postgres() {
    let services = [
        ("key-service", key_service::store::MIGRATIONS),
        ("vault-service", vault_service::store::MIGRATIONS),
        ("audit-service", audit_service::store::MIGRATIONS),
        ("rotation-scheduler", rotation_scheduler::store::MIGRATIONS),
    ];
    for (service, migrations) in services {
        let Some(pg_url) = postgres_url().await else {
            return;
        };
        let mut sqlite = built(&sqlite_url(), migrations).await;
        let mut postgres = built(&pg_url, migrations).await;
        let columns: usize = sqlite.values().map(|c| c.len()).sum();
        assert!(sqlite.len() >= 2 && columns >= 10, "{service}: {sqlite:?}");
        eprintln!("{service}: {} tables, {columns} columns", sqlite.len());
        for (owner, table) in ONE_DIALECT_ONLY {
            if *owner == service {
                let here = usize::from(sqlite.remove(*table).is_some())
                    + usize::from(postgres.remove(*table).is_some());
                assert_eq!(here, 1, "{service}.{table} is in exactly one dialect");
            }
        }
        assert_eq!(
            sqlite, postgres,
            "{service}: SQLite (left) vs Postgres (right)"
        );
    }
}
