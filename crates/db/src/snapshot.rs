//! A database's rows as lines of JSON, and back: how each service's snapshot is taken for a
//! backup and loaded into an empty database (ADR 8). Tables and column types come from the
//! live schema, so one piece of code serves every service, on either dialect, and a snapshot
//! taken on SQLite loads into Postgres and the other way round.
//!
//! Format, one JSON value per line: `{"snapshot":1,"dialect":D,"schema_version":N,"release":R}`,
//! then per table (referenced tables before the tables referring to them) a
//! header `{"table":T,"columns":[..],"types":[..]}`, its rows as arrays (bytes in base64,
//! integers as numbers, text as strings, null as null) and `{"end":T,"rows":N}`; last
//! `{"tables":N}`. What is stored is what the database holds: sealed values stay sealed.

use std::future::Future;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::TryStreamExt;
use serde_json::{Value, json};
use sqlx::{AnyPool, Row};

use crate::{Schema, schema_of};

/// Bytes of lines handed to the sink at once.
const BATCH: usize = 64 * 1024;

/// Why a snapshot could not be taken or loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The snapshot does not fit the target (another schema version, an unknown table or
    /// column), or is malformed.
    #[error("{0}")]
    Mismatch(String),
    /// The target already holds rows.
    #[error(
        "table {0} is not empty: a snapshot loads into an empty database only (nothing was \
         written)"
    )]
    NotEmpty(String),
    /// The receiver of the lines went away.
    #[error("the snapshot's reader went away")]
    Cancelled,
}

/// What a snapshot held: rows per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// The newest migration applied to the database.
    pub schema_version: i64,
    /// Rows per table, by name.
    pub rows: std::collections::BTreeMap<String, u64>,
}

async fn schema_version(conn: &mut sqlx::AnyConnection) -> Result<i64, sqlx::Error> {
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?;
    Ok(v.unwrap_or(0))
}

/// Streams every row of every table of `pool` to `sink` as lines of JSON, from one read
/// transaction (a state the database was in; on Postgres repeatable read, on SQLite the
/// snapshot WAL mode gives a reader). `sink` gets batches of whole lines and returns false
/// to stop.
pub async fn dump<F, Fut>(
    pool: &AnyPool,
    sqlite: bool,
    mut sink: F,
) -> Result<Counts, SnapshotError>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut tx = pool.begin().await?;
    if !sqlite {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
    }
    let tables = schema_in(&mut tx, sqlite).await?;
    let mut counts = Counts {
        schema_version: schema_version(&mut tx).await?,
        ..Counts::default()
    };
    let mut out = Vec::with_capacity(BATCH);
    line(
        &mut out,
        &json!({
            "snapshot": 1,
            "dialect": dialect(sqlite),
            "schema_version": counts.schema_version,
            "release": env!("CARGO_PKG_VERSION"),
        }),
    );
    let order = referenced_first(&tables, &foreign_keys(&mut tx, sqlite).await?);
    for table in &order {
        let columns = &tables[table];
        let names: Vec<&String> = columns.keys().collect();
        let types: Vec<&str> = columns.values().copied().collect();
        line(
            &mut out,
            &json!({"table": table, "columns": names, "types": types}),
        );
        let select = format!(
            "SELECT {} FROM {} ORDER BY 1",
            names
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", "),
            quote(table)
        );
        let mut n = 0u64;
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(select)).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let values = types
                .iter()
                .enumerate()
                .map(|(i, t)| read_value(&row, i, t))
                .collect::<Result<Vec<Value>, _>>()?;
            line(&mut out, &Value::Array(values));
            n += 1;
            if out.len() >= BATCH && !sink(std::mem::take(&mut out)).await {
                return Err(SnapshotError::Cancelled);
            }
        }
        drop(rows);
        line(&mut out, &json!({"end": table, "rows": n}));
        counts.rows.insert(table.clone(), n);
    }
    line(&mut out, &json!({"tables": order.len()}));
    if !sink(out).await {
        return Err(SnapshotError::Cancelled);
    }
    tx.rollback().await?;
    Ok(counts)
}

/// (table, table it references) for every foreign key.
async fn foreign_keys(
    conn: &mut sqlx::AnyConnection,
    sqlite: bool,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let sql = if sqlite {
        "SELECT m.name, f.\"table\" FROM sqlite_master m, pragma_foreign_key_list(m.name) f \
         WHERE m.type = 'table'"
    } else {
        "SELECT tc.table_name::text, ccu.table_name::text \
         FROM information_schema.table_constraints tc \
         JOIN information_schema.constraint_column_usage ccu \
           ON tc.constraint_name = ccu.constraint_name AND tc.table_schema = ccu.table_schema \
         WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = current_schema()"
    };
    sqlx::query_as(sql).fetch_all(&mut *conn).await
}

/// The tables in an order that loads every referenced row before the rows referring to it
/// (by name among equals, so a snapshot's order is stable).
fn referenced_first(tables: &Schema, references: &[(String, String)]) -> Vec<String> {
    let mut waiting: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> = tables
        .keys()
        .map(|t| (t.as_str(), std::collections::BTreeSet::new()))
        .collect();
    for (from, to) in references {
        if from != to
            && tables.contains_key(to)
            && let Some(needs) = waiting.get_mut(from.as_str())
        {
            needs.insert(to.as_str());
        }
    }
    let mut order = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() {
        let ready: Vec<&str> = waiting
            .iter()
            .filter(|(_, needs)| needs.is_empty())
            .map(|(t, _)| *t)
            .collect();
        // A cycle (none in Sentia's schemas) would leave nothing ready: take the rest by name.
        let next = if ready.is_empty() {
            waiting.keys().copied().collect()
        } else {
            ready
        };
        for t in next {
            waiting.remove(t);
            for needs in waiting.values_mut() {
                needs.remove(t);
            }
            order.push(t.to_string());
        }
    }
    order
}

async fn schema_in(conn: &mut sqlx::AnyConnection, sqlite: bool) -> Result<Schema, sqlx::Error> {
    schema_of(conn, sqlite).await
}

fn dialect(sqlite: bool) -> &'static str {
    if sqlite { "sqlite" } else { "postgres" }
}

fn line(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(v.to_string().as_bytes());
    out.push(b'\n');
}

/// An identifier quoted for both dialects (table and column names come from the schema).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn read_value(row: &sqlx::any::AnyRow, i: usize, family: &str) -> Result<Value, sqlx::Error> {
    Ok(match family {
        "integer" | "bool" => row
            .try_get::<Option<i64>, _>(i)?
            .map_or(Value::Null, Value::from),
        "real" => row
            .try_get::<Option<f64>, _>(i)?
            .map_or(Value::Null, Value::from),
        "text" => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, Value::from),
        _ => row
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map_or(Value::Null, |b| Value::from(STANDARD.encode(b))),
    })
}

/// What [`load`] may find in the target database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Freshly migrated: any other row is refused, naming its table.
    Empty,
    /// Holding data that the snapshot replaces: every row is deleted first, in the same
    /// transaction as the load, so a failed load leaves the old data in place.
    Replace,
}

/// What a database holds before a load: its schema version and the first table, other than
/// the `seeded` ones, that has rows — so a restore of several databases can refuse before it
/// loads any of them.
pub async fn occupancy(
    pool: &AnyPool,
    sqlite: bool,
    seeded: &[&str],
) -> Result<(i64, Option<String>), SnapshotError> {
    let mut conn = pool.acquire().await?;
    let here = schema_in(&mut conn, sqlite).await?;
    let occupied = first_occupied(&mut conn, &here, seeded).await?;
    Ok((schema_version(&mut conn).await?, occupied))
}

async fn first_occupied(
    conn: &mut sqlx::AnyConnection,
    tables: &Schema,
    seeded: &[&str],
) -> Result<Option<String>, sqlx::Error> {
    for table in tables.keys().filter(|t| !seeded.contains(&t.as_str())) {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {}",
            quote(table)
        )))
        .fetch_one(&mut *conn)
        .await?;
        if rows > 0 {
            return Ok(Some(table.clone()));
        }
    }
    Ok(None)
}

/// One piece of a snapshot, in order: a table's header, then its rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// The start of a table.
    Table {
        /// Its name.
        name: String,
        /// Its columns, in the order of every row's values.
        columns: Vec<String>,
        /// Each column's type family (`integer`, `bool`, `real`, `text`, `bytes`).
        types: Vec<String>,
    },
    /// One row of the current table: bytes as base64 strings, integers as numbers.
    Row(Vec<Value>),
}

/// Reads a snapshot made by [`dump`] without a database, checking its structure as it goes:
/// the first line, every table's header, each row's width, each table's end count and the
/// closing line. What [`load`] and a backup's verification both read it with.
pub struct Parser<'a> {
    lines: Lines<'a>,
    walker: Walker,
}

/// A snapshot's lines, numbered.
type Lines<'a> = std::iter::Enumerate<std::slice::Split<'a, u8, fn(&u8) -> bool>>;

fn newline(b: &u8) -> bool {
    *b == b'\n'
}

impl<'a> Parser<'a> {
    /// Reads the first line.
    pub fn new(snapshot: &'a [u8]) -> Result<Self, SnapshotError> {
        let mut parser = Self {
            lines: snapshot.split(newline as fn(&u8) -> bool).enumerate(),
            walker: Walker::default(),
        };
        while !parser.walker.started {
            let Some((n, line)) = parser.lines.next() else {
                return Err(parser.walker.unfinished());
            };
            parser.walker.line(n + 1, line)?;
        }
        Ok(parser)
    }

    /// The dialect of the database it was taken from (`sqlite`, `postgres`).
    pub fn dialect(&self) -> &str {
        &self.walker.dialect
    }

    /// The schema version it was taken at, and (once read to the end) its rows per table.
    pub fn counts(&self) -> &Counts {
        &self.walker.counts
    }

    /// The next table header or row; `None` after the closing line (and only blank lines
    /// after it).
    pub fn next_item(&mut self) -> Result<Option<Item>, SnapshotError> {
        for (n, line) in self.lines.by_ref() {
            if let Some(item) = self.walker.line(n + 1, line)? {
                return Ok(Some(item));
            }
        }
        if self.walker.finished {
            Ok(None)
        } else {
            Err(self.walker.unfinished())
        }
    }

    /// Reads to the end, checking everything, and returns the counts.
    pub fn finish(mut self) -> Result<Counts, SnapshotError> {
        while self.next_item()?.is_some() {}
        Ok(self.walker.counts)
    }
}

/// Longest snapshot line [`Feed`] accepts: far above any row (a secret value is at most
/// 64 KiB), low enough that a stream without newlines cannot take all memory.
pub const MAX_LINE: usize = 16 << 20;

/// Reads a snapshot as it arrives, in pieces that may split lines anywhere, with the checks
/// of [`Parser`]; holds one line at a time, so a backup never needs a whole snapshot in
/// memory to describe it.
#[derive(Default)]
pub struct Feed {
    walker: Walker,
    partial: Vec<u8>,
    line: usize,
}

impl Feed {
    /// A feed expecting a snapshot's first line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `bytes`, handing each table header and row they complete to `visit`.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        mut visit: impl FnMut(Item) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        while let Some(at) = bytes.iter().position(|b| *b == b'\n') {
            let (head, rest) = (&bytes[..at], &bytes[at + 1..]);
            self.line += 1;
            let item = if self.partial.is_empty() {
                self.walker.line(self.line, head)?
            } else {
                self.partial.extend_from_slice(head);
                let line = std::mem::take(&mut self.partial);
                self.walker.line(self.line, &line)?
            };
            if let Some(item) = item {
                visit(item)?;
            }
            bytes = rest;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            return Err(mismatch(format!(
                "snapshot line {} is longer than {MAX_LINE} bytes",
                self.line + 1
            )));
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    /// Ends the snapshot: its dialect and counts once it is whole and well formed.
    pub fn finish(
        mut self,
        visit: impl FnMut(Item) -> Result<(), SnapshotError>,
    ) -> Result<(String, Counts), SnapshotError> {
        if !self.partial.is_empty() {
            self.push(b"\n", visit)?;
        }
        if !self.walker.finished {
            return Err(self.walker.unfinished());
        }
        Ok((self.walker.dialect, self.walker.counts))
    }
}

/// The structural checks of a snapshot, one line at a time: the state both [`Parser`] (a
/// whole snapshot) and [`Feed`] (one arriving in pieces) keep.
#[derive(Default)]
struct Walker {
    dialect: String,
    counts: Counts,
    current: Option<(String, usize, u64)>,
    tables: u64,
    started: bool,
    finished: bool,
}

impl Walker {
    /// Checks line `n` (1-based); a table header or row it holds comes back.
    fn line(&mut self, n: usize, line: &[u8]) -> Result<Option<Item>, SnapshotError> {
        if line.is_empty() {
            return Ok(None);
        }
        if self.finished {
            return Err(mismatch("lines follow the snapshot's last line".into()));
        }
        let v: Value = serde_json::from_slice(line)
            .map_err(|e| mismatch(format!("snapshot line {n}: {e}")))?;
        if !self.started {
            let version = v["schema_version"].as_i64();
            let (Some(version), Some(dialect)) = (version, v["dialect"].as_str()) else {
                return Err(mismatch("not a database snapshot (format 1)".into()));
            };
            if v["snapshot"] != json!(1) {
                return Err(mismatch("not a database snapshot (format 1)".into()));
            }
            self.dialect = dialect.to_string();
            self.counts.schema_version = version;
            self.started = true;
            return Ok(None);
        }
        if let Some((table, width, rows)) = &mut self.current {
            if let Some(end) = v.get("end") {
                if end.as_str() != Some(table.as_str()) || v["rows"].as_u64() != Some(*rows) {
                    return Err(mismatch(format!(
                        "table {table}: the end line says {v}, {rows} rows were read"
                    )));
                }
                self.counts.rows.insert(table.clone(), *rows);
                self.current = None;
                return Ok(None);
            }
            let Value::Array(values) = v else {
                return Err(mismatch(format!("table {table}: a row is not an array")));
            };
            if values.len() != *width {
                return Err(mismatch(format!(
                    "table {table}: a row has {} values, the table {width} columns",
                    values.len()
                )));
            }
            *rows += 1;
            return Ok(Some(Item::Row(values)));
        }
        if let Some(count) = v.get("tables") {
            if count.as_u64() != Some(self.tables) {
                return Err(mismatch(format!(
                    "the last line says {count} tables, {} were read",
                    self.tables
                )));
            }
            self.finished = true;
            return Ok(None);
        }
        let name = v["table"]
            .as_str()
            .ok_or_else(|| mismatch(format!("expected a table header, got {v}")))?
            .to_string();
        let columns: Vec<String> = serde_json::from_value(v["columns"].clone())
            .map_err(|e| mismatch(format!("table {name}: columns: {e}")))?;
        let types: Vec<String> = serde_json::from_value(v["types"].clone())
            .map_err(|e| mismatch(format!("table {name}: types: {e}")))?;
        if columns.len() != types.len() || self.counts.rows.contains_key(&name) {
            return Err(mismatch(format!(
                "table {name}: a malformed or repeated header"
            )));
        }
        self.tables += 1;
        self.current = Some((name.clone(), columns.len(), 0));
        Ok(Some(Item::Table {
            name,
            columns,
            types,
        }))
    }

    /// Why a snapshot that stopped here is incomplete.
    fn unfinished(&self) -> SnapshotError {
        match (&self.current, self.started) {
            (_, false) => mismatch("the snapshot is empty".into()),
            (Some((table, ..)), _) => mismatch(format!("the snapshot ends inside table {table}")),
            (None, true) => mismatch("the snapshot ends before its last line".into()),
        }
    }
}

fn mismatch(m: String) -> SnapshotError {
    SnapshotError::Mismatch(m)
}

/// Loads a snapshot made by [`dump`] into the migrated database `pool`, in one transaction:
/// the schema versions must match, every table the snapshot fills must exist here with the
/// same columns, and (for [`Target::Empty`]) the database must hold nothing but the starting
/// rows of the `seeded` tables (which the snapshot's rows replace); otherwise nothing is
/// written.
pub async fn load(
    pool: &AnyPool,
    sqlite: bool,
    seeded: &[&str],
    snapshot: &[u8],
    target: Target,
) -> Result<Counts, SnapshotError> {
    let mut parser = Parser::new(snapshot)?;
    let mut tx = pool.begin().await?;
    let here = schema_in(&mut tx, sqlite).await?;
    let order = referenced_first(&here, &foreign_keys(&mut tx, sqlite).await?);
    if target == Target::Empty
        && let Some(table) = first_occupied(&mut tx, &here, seeded).await?
    {
        return Err(SnapshotError::NotEmpty(table));
    }
    for table in order.iter().rev() {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {}", quote(table))))
            .execute(&mut *tx)
            .await?;
    }
    let schema_version = schema_version(&mut tx).await?;
    // Migrations are numbered per dialect; across dialects the tables' columns are compared
    // one by one instead.
    if parser.dialect() == dialect(sqlite) && parser.counts().schema_version != schema_version {
        return Err(mismatch(format!(
            "the snapshot is of schema version {}, this database is at {schema_version}: \
             restore with the release that took it",
            parser.counts().schema_version
        )));
    }
    let mut batch: Option<Batch> = None;
    while let Some(item) = parser.next_item()? {
        match item {
            Item::Table {
                name,
                columns,
                types,
            } => {
                if let Some(target) = here.get(&name) {
                    let wanted: Vec<&String> = target.keys().collect();
                    if wanted != columns.iter().collect::<Vec<_>>() {
                        return Err(mismatch(format!(
                            "table {name} has columns {wanted:?} here, {columns:?} in the snapshot"
                        )));
                    }
                }
                if let Some(done) = batch.take() {
                    done.flush(&mut tx).await?;
                }
                batch = Some(Batch {
                    table: name,
                    columns,
                    types,
                    rows: Vec::new(),
                });
            }
            Item::Row(values) => {
                let Some(b) = batch.as_mut() else {
                    return Err(mismatch("a row before any table".into()));
                };
                if !here.contains_key(&b.table) {
                    return Err(mismatch(format!(
                        "the snapshot has rows in table {}, which this database does not have",
                        b.table
                    )));
                }
                b.rows.push(values);
                if b.rows.len() * b.columns.len().max(1) >= BINDS_PER_INSERT {
                    b.flush_rows(&mut tx).await?;
                }
            }
        }
    }
    if let Some(done) = batch.take() {
        done.flush(&mut tx).await?;
    }
    if !sqlite {
        advance_sequences(&mut tx).await?;
    }
    tx.commit().await?;
    let mut counts = parser.counts().clone();
    counts.schema_version = schema_version;
    Ok(counts)
}

/// Values bound in one multi-row INSERT at most (SQLite allows 32,766, Postgres 65,535).
const BINDS_PER_INSERT: usize = 8_000;

/// Rows of one table waiting to be inserted together.
struct Batch {
    table: String,
    columns: Vec<String>,
    types: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Batch {
    async fn flush(mut self, conn: &mut sqlx::AnyConnection) -> Result<(), SnapshotError> {
        self.flush_rows(conn).await
    }

    /// Inserts the waiting rows in one statement.
    async fn flush_rows(&mut self, conn: &mut sqlx::AnyConnection) -> Result<(), SnapshotError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let width = self.columns.len();
        let tuples: Vec<String> = (0..self.rows.len())
            .map(|r| {
                let marks: Vec<String> =
                    (1..=width).map(|c| format!("${}", r * width + c)).collect();
                format!("({})", marks.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            quote(&self.table),
            self.columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", "),
            tuples.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in &self.rows {
            for (value, family) in row.iter().zip(&self.types) {
                q = bind(q, value, family)
                    .map_err(|m| mismatch(format!("table {}: {m}", self.table)))?;
            }
        }
        q.execute(&mut *conn).await?;
        self.rows.clear();
        Ok(())
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn bind<'q>(q: Query<'q>, v: &Value, family: &str) -> Result<Query<'q>, String> {
    Ok(match (family, v) {
        ("integer" | "bool", Value::Null) => q.bind(None::<i64>),
        ("integer" | "bool", v) => {
            q.bind(v.as_i64().ok_or_else(|| format!("{v} is not an integer"))?)
        }
        ("real", Value::Null) => q.bind(None::<f64>),
        ("real", v) => q.bind(v.as_f64().ok_or_else(|| format!("{v} is not a number"))?),
        ("text", Value::Null) => q.bind(None::<String>),
        ("text", v) => q.bind(
            v.as_str()
                .ok_or_else(|| format!("{v} is not text"))?
                .to_string(),
        ),
        (_, Value::Null) => q.bind(None::<Vec<u8>>),
        (_, v) => q.bind(
            v.as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| "a bytes value is not base64".to_string())?,
        ),
    })
}

/// Moves Postgres sequences (BIGSERIAL columns) past the ids just loaded.
async fn advance_sequences(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    let serial: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (table, column) in serial {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('{t}', '{c}'), COALESCE((SELECT MAX({qc}) FROM {qt}), 0) + 1, false)",
            t = table.replace('\'', "''"),
            c = column.replace('\'', "''"),
            qc = quote(&column),
            qt = quote(&table),
        )))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"snapshot":1,"dialect":"sqlite","schema_version":3,"release":"x"}
{"table":"a","columns":["id","v"],"types":["integer","bytes"]}
[1,"AA=="]
[2,null]
{"end":"a","rows":2}
{"table":"b","columns":["id"],"types":["integer"]}
{"end":"b","rows":0}
{"tables":2}
"#;

    /// Reads `text` whole with [`Parser`] and fed in pieces of every size from 1 to 9 bytes
    /// with [`Feed`]; all must agree, errors included.
    fn read(text: &str) -> Result<(Vec<Item>, Counts), SnapshotError> {
        let whole: Result<_, SnapshotError> = (|| {
            let mut p = Parser::new(text.as_bytes())?;
            let mut items = Vec::new();
            while let Some(i) = p.next_item()? {
                items.push(i);
            }
            Ok((items, p.finish()?))
        })();
        for size in 1..10 {
            let fed: Result<_, SnapshotError> = (|| {
                let mut feed = Feed::new();
                let mut items = Vec::new();
                for piece in text.as_bytes().chunks(size) {
                    feed.push(piece, |i| {
                        items.push(i);
                        Ok(())
                    })?;
                }
                let (_, counts) = feed.finish(|i| {
                    items.push(i);
                    Ok(())
                })?;
                Ok((items, counts))
            })();
            match (&whole, &fed) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "pieces of {size}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "pieces of {size}"),
                _ => panic!("pieces of {size}: {fed:?} where the whole gives {whole:?}"),
            }
        }
        whole
    }

    #[test]
    fn a_snapshot_parses_into_tables_rows_and_counts() {
        let (items, counts) = read(GOOD).unwrap();
        assert_eq!(items.len(), 4, "two headers, two rows");
        assert_eq!(items[1], Item::Row(vec![json!(1), json!("AA==")]));
        assert_eq!(counts.schema_version, 3);
        assert_eq!(
            counts.rows.into_iter().collect::<Vec<_>>(),
            [("a".to_string(), 2), ("b".to_string(), 0)]
        );
    }

    #[test]
    fn a_fed_line_longer_than_the_bound_is_refused() {
        let mut feed = Feed::new();
        let long = vec![b'x'; MAX_LINE + 1];
        let err = feed.push(&long, |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("line 1 is longer than"), "{err}");
    }

    #[test]
    fn a_damaged_snapshot_is_refused_saying_where() {
        let cases = [
            (GOOD.replace("[2,null]", "[2]"), "a row has 1 values"),
            (GOOD.replace("\"rows\":2", "\"rows\":3"), "2 rows were read"),
            (
                GOOD.replace("{\"tables\":2}", "{\"tables\":1}"),
                "2 were read",
            ),
            (format!("{GOOD}[3]\n"), "lines follow"),
            (
                GOOD.replace("{\"tables\":2}\n", ""),
                "ends before its last line",
            ),
            (
                GOOD.replace("{\"end\":\"b\",\"rows\":0}\n{\"tables\":2}\n", ""),
                "ends inside table b",
            ),
            (
                GOOD.replace("\"table\":\"b\"", "\"table\":\"a\""),
                "repeated header",
            ),
            (GOOD.replace("\"snapshot\":1", "\"snapshot\":2"), "format 1"),
            (GOOD.replace("[1,\"AA==\"]", "[1,"), "snapshot line 3"),
            (String::new(), "is empty"),
            (format!("{GOOD}[3]"), "lines follow"),
        ];
        for (text, wanted) in cases {
            let err = read(&text).unwrap_err().to_string();
            assert!(err.contains(wanted), "{wanted:?} not in {err:?}");
        }
    }
}
