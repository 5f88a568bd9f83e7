//! The test sandbox every suite, the bench and cross-service tests share: fresh databases
//! (a SQLite file, or a new Postgres database per test that later runs clean up), Redis when
//! asked, and Sentia's services started in-process on ephemeral ports through their real
//! `Config` and `run`, each stopped by joining its task. A dev-dependency only: nothing here
//! ships.
//!
//! Layout: [`keys`] (key-service, the test identities and their tokens), the vault stack at the
//! root ([`Stack`]: key-service + vault-service, replicas, request builders and
//! [`on_both_backends!`]), [`audit`] (audit-service), [`rotation`] (rotation-scheduler), and
//! [`Sandbox`]: any set of the four, wired to each other, stopped by joining every task;
//! [`kubernetes`], a cluster's service-account issuer for Kubernetes login.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

pub mod audit;
pub mod keys;
pub mod kubernetes;
pub mod rotation;
mod sandbox;
mod vault;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sqlx::Executor;
use tokio::net::{TcpListener, TcpStream};

pub use sandbox::{Sandbox, SandboxBuilder};
pub use vault::{Replica, Stack, get, get_label, get_version, put};

/// Runs each named `async fn(&Stack)` as a test on SQLite and on Postgres.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(stack) = $crate::Stack::start($crate::Backend::Sqlite, &[]).await {
                    super::$name(&stack).await;
                    stack.stop().await;
                }
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(stack) = $crate::Stack::start($crate::Backend::Postgres, &[]).await {
                    super::$name(&stack).await;
                    stack.stop().await;
                }
            })*
        }
    };
}

/// Waits until the server at `addr` answers gRPC health checks (10 s at most).
pub async fn wait_for_health(addr: &str) {
    let channel = sentia_runtime::client::connect_lazy(addr, None).unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..500 {
        if health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{addr} never answered a health check");
}

/// Collects everything a tracing subscriber writes, to search logs for leaked values.
#[derive(Clone, Default)]
pub struct Capture(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    // Tests run on parallel threads: two asking within one tick of the clock must still get
    // different names (two stacks on one SQLite file race each other's migrations), so the
    // time part only ever moves forward. It stays the creation time (to the nanosecond) that
    // `drop_abandoned_databases` reads back.
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let nanos = match LAST.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
        Some(now.max(last + 1))
    }) {
        Ok(last) | Err(last) => now.max(last + 1),
    };
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// A new SQLite database file.
pub fn sqlite_url() -> String {
    let path = scratch_path(&format!("{}.db", unique("sentia_ks")));
    format!("sqlite://{}?mode=rwc", path.display())
}

/// A path for a test's file (a database, a spool) in this process's own directory under the
/// system's temporary directory. The first call removes the directories of test processes that
/// are gone, so files a run leaves behind do not pile up (as `drop_abandoned_databases` does
/// for Postgres).
pub fn scratch_path(name: &str) -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join("sentia-tests");
        remove_abandoned(&root);
        let mine = root.join(std::process::id().to_string());
        std::fs::create_dir_all(&mine).unwrap();
        mine
    })
    .join(name)
}

/// Removes the per-process directories under `root` whose process no longer runs (where
/// /proc says so; elsewhere nothing is removed).
fn remove_abandoned(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let gone = entry
            .file_name()
            .to_str()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id()
                    && std::path::Path::new("/proc/self").exists()
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            });
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A brand-new Postgres database, or None (announced) when `SENTIA_TEST_POSTGRES_URL` is not
/// set outside CI. Under CI=true a missing Postgres fails the test.
pub async fn postgres_url() -> Option<String> {
    postgres_database("sentia_ks", "").await
}

/// A brand-new Postgres database named from `prefix`, created with `options` (e.g. a
/// locale), or None (announced) when `SENTIA_TEST_POSTGRES_URL` is not set outside CI.
/// Databases that earlier test processes left behind are dropped first, so runs never pile
/// them up on the server (a test that panics cannot drop its own).
pub async fn postgres_database(prefix: &str, options: &str) -> Option<String> {
    let admin_url = postgres_admin_url()?;
    sqlx::any::install_default_drivers();
    let db = unique(prefix);
    let admin = sqlx::AnyPool::connect(&admin_url).await.unwrap();
    drop_abandoned_databases(&admin).await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {db} {options}"
        )))
        .await
        .unwrap();
    admin.close().await;
    let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap();
    Some(format!("{base}/{db}"))
}

/// Drops the test databases (named by [`unique`]: `sentia_*_{pid}_{nanos}`) whose creating
/// process has exited, or, where processes cannot be seen, that are more than an hour old.
/// A database still in use refuses the drop, which is ignored.
async fn drop_abandoned_databases(admin: &sqlx::AnyPool) {
    use sqlx::Row;
    let names: Vec<String> =
        sqlx::query("SELECT datname::text FROM pg_database WHERE datname LIKE 'sentia\\_%'")
            .fetch_all(admin)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let procfs = std::path::Path::new("/proc/self").exists();
    for name in names {
        let mut parts = name.rsplitn(3, '_');
        let (Some(Ok(nanos)), Some(Ok(pid))) = (
            parts.next().map(str::parse::<u128>),
            parts.next().map(str::parse::<u32>),
        ) else {
            continue;
        };
        let abandoned = if procfs {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        } else {
            now.saturating_sub(nanos) > 3_600_000_000_000
        };
        if abandoned {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name}"
                )))
                .await;
        }
    }
}

/// Which database a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A new database on the Postgres at `SENTIA_TEST_POSTGRES_URL`.
    Postgres,
}

/// A database URL for `backend`, or None (announced) when Postgres is not available here.
pub async fn database(backend: Backend) -> Option<String> {
    match backend {
        Backend::Sqlite => Some(sqlite_url()),
        Backend::Postgres => postgres_url().await,
    }
}

/// The URL of a server the suites need, from `variable`, or None (announced) outside CI when
/// it is not set. Under CI=true a missing server fails the test.
fn server_url(variable: &str, what: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(u) => Some(u),
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but {variable} is not set"
            );
            eprintln!("SKIPPED: {what} test ({variable} not set; run `bash tests/run`)");
            None
        }
    }
}

/// The Redis URL for tests (`SENTIA_TEST_REDIS_URL`), or None (announced) outside CI.
pub fn redis_url() -> Option<String> {
    server_url("SENTIA_TEST_REDIS_URL", "redis")
}

/// A bucket prefix of this test's own on the S3-protocol server the test command starts
/// (`SENTIA_TEST_S3_URL`, `http://HOST:PORT/BUCKET`): the destination (`s3://BUCKET/PREFIX`)
/// and the options that reach it. None (announced) outside CI when it is not set.
pub fn s3_destination() -> Option<(String, Vec<(String, String)>)> {
    let url = server_url("SENTIA_TEST_S3_URL", "S3 (moto)")?;
    let (endpoint, bucket) = url
        .rsplit_once('/')
        .expect("SENTIA_TEST_S3_URL is http://HOST:PORT/BUCKET");
    let options = [
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "sentia-test"),
        ("aws_secret_access_key", "sentia-test"),
        ("aws_region", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Some((format!("s3://{bucket}/{}", unique("backups")), options))
}

/// The Postgres admin URL (`SENTIA_TEST_POSTGRES_URL`: a superuser, which creates the test
/// databases and serves as the rotation suites' target), or None (announced) outside CI.
pub fn postgres_admin_url() -> Option<String> {
    server_url("SENTIA_TEST_POSTGRES_URL", "postgres")
}

/// A TCP proxy a test can cut (and restore), to see a peer disappear: Redis behind
/// vault-service, or vault-service behind a client.
pub struct Proxy {
    /// `redis://` (from [`Proxy::start`]) or `http://` URL of the proxy.
    pub url: String,
    /// `host:port` of the proxy.
    pub addr: String,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl Proxy {
    /// A proxy to the Redis at `redis_url`; `url` is the proxied Redis URL.
    pub async fn start(redis_url: &str) -> Self {
        let target = redis_url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let mut p = Self::to(&target).await;
        p.url = format!("redis://{}", p.addr);
        p
    }

    /// A proxy to `target` (`host:port`).
    pub async fn to(target: &str) -> Self {
        let target = target.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let url = format!("http://{addr}");
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close at once
                }
                let target = target.clone();
                let (up, cut) = (up2.clone(), cut2.clone());
                tokio::spawn(async move {
                    // Listen for a cut before anything can be forwarded, and then look at the
                    // flag: a cut while this connection was still being set up is not missed.
                    let cutting = cut.notified();
                    tokio::pin!(cutting);
                    cutting.as_mut().enable();
                    if !up.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cutting => {}
                    }
                });
            }
        });
        Self { url, addr, up, cut }
    }

    /// Drops every connection and refuses new ones, as if the peer had stopped.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_test_processes_that_are_gone_are_removed_and_live_ones_kept() {
        let root = std::env::temp_dir().join(unique("sentia_scratch_root"));
        let (gone, live, other) = (
            root.join("4294967290"),
            root.join(std::process::id().to_string()),
            root.join("not-a-pid"),
        );
        for dir in [&gone, &live, &other] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("a.db"), b"x").unwrap();
        }
        remove_abandoned(&root);
        assert_eq!(
            !gone.exists(),
            std::path::Path::new("/proc/self").exists(),
            "a dead process's directory goes where /proc tells"
        );
        assert!(live.join("a.db").exists() && other.exists());
        std::fs::remove_dir_all(&root).unwrap();
        assert!(scratch_path("x.db").starts_with(std::env::temp_dir().join("sentia-tests")));
    }
}
