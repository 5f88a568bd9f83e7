//! Database connections for every service: sqlx's `Any` driver, so one set of runtime queries
//! (with `$1` placeholders, which both accept) serves Postgres in production and SQLite for
//! the embedded default, plus migrations embedded per dialect.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::BTreeMap;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};

pub mod snapshot;

/// One migration: version, description, SQL.
pub type MigrationSource = (i64, &'static str, &'static str);

/// A service's migrations, written once per dialect (types differ: BYTEA vs BLOB, ...).
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// For `postgres://` URLs.
    pub postgres: &'static [MigrationSource],
    /// For `sqlite:` URLs.
    pub sqlite: &'static [MigrationSource],
    /// Tables the migrations fill with their starting rows (singleton heads): a fresh
    /// database holds these and nothing else, and a snapshot load replaces them.
    pub seeded: &'static [&'static str],
}

/// True for a SQLite URL.
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Connects, turns on WAL for SQLite (readers do not block the writer) and applies the
/// migrations for the URL's dialect.
pub async fn connect(
    url: &str,
    max_connections: u32,
    migrations: Migrations,
) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections.max(1))
        .connect(url)
        .await?;
    let sqlite = is_sqlite(url);
    if sqlite {
        sqlx::query("PRAGMA journal_mode=WAL")
            .execute(&pool)
            .await?;
    }
    let source = if sqlite {
        migrations.sqlite
    } else {
        migrations.postgres
    };
    let list: Vec<Migration> = source
        .iter()
        .map(|(version, name, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*name),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let migrator = Migrator {
        migrations: Cow::Owned(list),
        ..Migrator::DEFAULT
    };
    migrator.run(&pool).await?;
    Ok(pool)
}

/// A database's tables as the schema-parity check compares them: table → column → type
/// family (`integer`, `text`, `bytes`, `real`, `bool`), so Postgres's `BIGINT`/`BYTEA` and
/// SQLite's `INTEGER`/`BLOB` compare equal while a missing column or a text-for-bytes
/// mistake does not. sqlx's migration bookkeeping table is left out.
pub type Schema = BTreeMap<String, BTreeMap<String, &'static str>>;

/// The schema of the database `pool` is connected to.
pub async fn schema(pool: &AnyPool, sqlite: bool) -> Result<Schema, sqlx::Error> {
    schema_of(&mut *pool.acquire().await?, sqlite).await
}

/// [`schema`] as seen by one connection (inside its transaction, if it has one).
pub(crate) async fn schema_of(
    conn: &mut sqlx::AnyConnection,
    sqlite: bool,
) -> Result<Schema, sqlx::Error> {
    let sql = if sqlite {
        "SELECT m.name, p.name, p.type FROM sqlite_master m, pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'"
    } else {
        "SELECT table_name::text, column_name::text, data_type::text \
         FROM information_schema.columns WHERE table_schema = current_schema()"
    };
    let mut schema = Schema::new();
    for row in sqlx::query(sql).fetch_all(&mut *conn).await? {
        let (table, column, declared): (String, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if table == "_sqlx_migrations" {
            continue;
        }
        schema
            .entry(table)
            .or_default()
            .insert(column, type_family(&declared));
    }
    Ok(schema)
}

/// The family of a declared column type, by SQLite's affinity rules extended with the
/// Postgres names this project uses.
fn type_family(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    if t.contains("BOOL") {
        "bool"
    } else if t.contains("INT") {
        "integer"
    } else if t.contains("CHAR") || t.contains("TEXT") || t.contains("CLOB") {
        "text"
    } else if t.contains("BLOB") || t.contains("BYTEA") || t.is_empty() {
        "bytes"
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        "real"
    } else {
        "other"
    }
}

/// Reads `SENTIA_DATABASE_URL` (default `default_url`) and `SENTIA_DATABASE_MAX_CONNECTIONS`.
pub fn from_source(reader: &mut sentia_config::Reader<'_>, default_url: &str) -> (String, u32) {
    let url = reader.string_or("SENTIA_DATABASE_URL", default_url);
    if !(url.starts_with("postgres") || is_sqlite(&url)) {
        reader.problem("SENTIA_DATABASE_URL must start with postgres:// or sqlite:");
    }
    let max = reader.parse_or(
        "SENTIA_DATABASE_MAX_CONNECTIONS",
        10u32,
        "a positive integer",
    );
    (url, max)
}

/// A database error as the caller sees it: UNAVAILABLE (retry later) when the database cannot
/// be reached, INTERNAL otherwise. Details go to the log, not to the caller.
pub fn error_status(e: &sqlx::Error, what: &str) -> tonic::Status {
    tracing::error!(error = %e, "{what} error");
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            tonic::Status::unavailable(format!("{what} is unavailable; retry later"))
        }
        // A stored value of the wrong type (or a column gone): the data was altered or
        // damaged outside the service, which retrying cannot fix.
        sqlx::Error::ColumnDecode { index, .. } => tonic::Status::data_loss(format!(
            "{what} holds a value of the wrong type in column {index}: the row was altered or \
             damaged; restore it from backup"
        )),
        sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => tonic::Status::data_loss(
            format!("{what} holds a row that cannot be read back; restore it from backup"),
        ),
        _ => tonic::Status::internal(format!("{what} error")),
    }
}
