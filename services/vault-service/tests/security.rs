//! Tampered rows fail loudly, and no plaintext value, token or secret id reaches the
//! database, Redis or the logs.
#![allow(clippy::unwrap_used)]

use sentia_testkit as support;

use support::keys::Capture;

use sentia_proto::vault::v1 as pb;
use support::{Backend, Stack, get, get_version};
use tonic::Code;

// The in-process record cache would keep serving the record it read before the tampering
// (correctly: it is what was written); these tests read through to the database each time.
const NO_LOCAL_CACHE: &[(&str, &str)] = &[("SENTIA_LOCAL_CACHE_TTL", "0")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_moved_ciphertext_row_is_data_loss_on_sqlite() {
    if let Some(s) = Stack::start(Backend::Sqlite, NO_LOCAL_CACHE).await {
        a_tampered_or_moved_ciphertext_row_is_data_loss_not_garbage(&s).await;
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_value_of_the_wrong_type_is_data_loss_not_internal() {
    // SQLite stores what it is given: a tier edited into text.
    let Some(s) = Stack::start(Backend::Sqlite, NO_LOCAL_CACHE).await else {
        return;
    };
    s.put("prod/app/typed", b"v").await;
    let pool = sqlx::AnyPool::connect(&s.database_url).await.unwrap();
    sqlx::query("UPDATE secrets SET tier = 'high' WHERE path = 'prod/app/typed'")
        .execute(&pool)
        .await
        .unwrap();
    let err = s
        .secrets(&s.root_token)
        .await
        .get_secret(get("prod/app/typed"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains("restore"), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_moved_ciphertext_row_is_data_loss_on_postgres() {
    if let Some(s) = Stack::start(Backend::Postgres, NO_LOCAL_CACHE).await {
        a_tampered_or_moved_ciphertext_row_is_data_loss_not_garbage(&s).await;
        s.stop().await;
    }
}

async fn a_tampered_or_moved_ciphertext_row_is_data_loss_not_garbage(s: &Stack) {
    let mut c = s.secrets(&s.root_token).await;
    s.put("prod/app/a", b"value-a").await;
    s.put("prod/app/b", b"value-b").await;
    s.put("prod/app/c", b"value-c").await;
    // Warm the data-key cache so the tamper is caught even when key-service is skipped.
    for p in ["prod/app/a", "prod/app/b", "prod/app/c"] {
        c.get_secret(get(p)).await.unwrap();
    }
    let pool = sqlx::AnyPool::connect(&s.database_url).await.unwrap();
    let (ct,): (Vec<u8>,) = sqlx::query_as(
        "SELECT ciphertext FROM secret_versions WHERE path = 'prod/app/a' AND version = 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut flipped = ct.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    sqlx::query(
        "UPDATE secret_versions SET ciphertext = $1 WHERE path = 'prod/app/a' AND version = 1",
    )
    .bind(flipped)
    .execute(&pool)
    .await
    .unwrap();
    // Move b's sealed row (ciphertext and wrapped key) onto c: the context no longer matches.
    let (bct, bwk): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT ciphertext, wrapped_key FROM secret_versions WHERE path = 'prod/app/b' AND version = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query("UPDATE secret_versions SET ciphertext = $1, wrapped_key = $2 WHERE path = 'prod/app/c' AND version = 1")
        .bind(bct)
        .bind(bwk.clone())
        .execute(&pool)
        .await
        .unwrap();
    // And corrupt b's own wrapped key.
    let mut bad_wk = bwk;
    bad_wk[10] ^= 0x80;
    sqlx::query(
        "UPDATE secret_versions SET wrapped_key = $1 WHERE path = 'prod/app/b' AND version = 1",
    )
    .bind(bad_wk)
    .execute(&pool)
    .await
    .unwrap();
    for p in ["prod/app/a", "prod/app/b", "prod/app/c"] {
        let err = c.get_secret(get_version(p, 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{p}: {err:?}");
        assert!(err.message().contains(p), "{p}: {}", err.message());
        assert!(!err.message().contains("value-"), "{}", err.message());
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of a SQLite database (main file and WAL).
fn sqlite_bytes(url: &str) -> Vec<u8> {
    let path = url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let mut all = std::fs::read(&path).unwrap();
    if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
        all.extend(wal);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_token_or_secret_id_reaches_the_database_redis_or_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let redis = support::redis_url();
    let prefix = format!("{}:", support::unique("hygiene"));
    let mut extra = vec![("SENTIA_REDIS_PREFIX", prefix.as_str())];
    if let Some(u) = &redis {
        extra.push(("SENTIA_REDIS_URL", u.as_str()));
    }
    let Some(s) = Stack::start(Backend::Sqlite, &extra).await else {
        return;
    };
    let canary = b"PLAINTEXT-CANARY-vault-7f3e91";
    let mut c = s.secrets(&s.root_token).await;
    c.put_secret(support::put("prod/app/canary", canary))
        .await
        .unwrap();
    c.put_secret(support::put("prod/app/canary", canary))
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            c.get_secret(get("prod/app/canary"))
                .await
                .unwrap()
                .into_inner()
                .value,
            canary
        );
    }
    c.batch_get_secrets(pb::BatchGetSecretsRequest {
        requests: vec![get("prod/app/canary")],
    })
    .await
    .unwrap();
    c.describe_secret(pb::DescribeSecretRequest {
        path: "prod/app/canary".into(),
    })
    .await
    .unwrap();
    c.list_secrets(pb::ListSecretsRequest::default())
        .await
        .unwrap();
    let cred = s.credential("hygiene", &["developer"]).await;
    let login = s
        .auth("")
        .await
        .login(pb::LoginRequest {
            role_id: cred.role_id.clone(),
            secret_id: cred.secret_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let _ = s
        .secrets(&login.token)
        .await
        .get_secret(get("prod/app/canary"))
        .await;
    let _ = s
        .auth("")
        .await
        .login(pb::LoginRequest {
            role_id: cred.role_id.clone(),
            secret_id: format!("{}x", cred.secret_id),
        })
        .await;

    let root_token = s.root_token.clone();
    let db = sqlite_bytes(&s.database_url);
    let secrets: [(&str, &[u8]); 4] = [
        ("secret value", canary),
        ("root token", root_token.as_bytes()),
        ("secret id", cred.secret_id.as_bytes()),
        ("jwt", login.token.as_bytes()),
    ];
    for (what, bytes) in secrets {
        assert!(!contains(&db, bytes), "{what} found in the database file");
    }
    if let Some(u) = &redis {
        let client = redis::Client::open(u.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            keys.iter().any(|k| k.contains("rec:prod/app/canary")),
            "cache was not used: {keys:?}"
        );
        for k in keys {
            if k.contains(":rev:") {
                continue;
            }
            let v: Vec<u8> = redis::cmd("GET")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .unwrap();
            for (what, bytes) in secrets {
                assert!(!contains(&v, bytes), "{what} found in redis key {k}");
            }
        }
    }
    s.stop().await;
    let logs = capture.0.lock().unwrap().clone();
    assert!(
        contains(&logs, b"secret version written"),
        "logs were not captured"
    );
    for (what, bytes) in secrets {
        assert!(!contains(&logs, bytes), "{what} found in the logs");
    }
}

/// Every row of every vault-service table on Postgres, as text (bytea shows as hex).
async fn postgres_dump(url: &str) -> String {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let mut all = String::new();
    for table in [
        "secrets",
        "secret_versions",
        "secret_labels",
        "put_requests",
        "secret_events",
        "app_credentials",
        "revoked_tokens",
        "root_tokens",
    ] {
        let (dump,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COALESCE(string_agg(t::text, '|'), '') FROM {table} t"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        all.push_str(&dump);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_token_or_secret_id_reaches_postgres() {
    let Some(s) = Stack::start(Backend::Postgres, &[]).await else {
        return;
    };
    let canary = b"PLAINTEXT-CANARY-pg-41d0c2";
    s.put("prod/app/canary", canary).await;
    let mut c = s.secrets(&s.root_token).await;
    assert_eq!(
        c.get_secret(get("prod/app/canary"))
            .await
            .unwrap()
            .into_inner()
            .value,
        canary
    );
    let cred = s.credential("pg-hygiene", &["developer"]).await;
    let dump = postgres_dump(&s.database_url).await;
    assert!(
        dump.contains("prod/app/canary"),
        "the dump did not see the rows"
    );
    let as_hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for (what, bytes) in [
        ("secret value", &canary[..]),
        ("root token", s.root_token.as_bytes()),
        ("secret id", cred.secret_id.as_bytes()),
    ] {
        assert!(
            !dump.contains(std::str::from_utf8(bytes).unwrap()),
            "{what} found in Postgres"
        );
        assert!(
            !dump.contains(&as_hex(bytes)),
            "{what} found in Postgres (as bytea)"
        );
    }
    s.stop().await;
}
